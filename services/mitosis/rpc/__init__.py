"""What both services share to serve gRPC: the server and its health (`serving`), server
interceptors (`interceptors`, `request_decoding`, `auth`, `logs`), TLS (`tls`) and the
Prometheus endpoint (`metrics_server`)."""
