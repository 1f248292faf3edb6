"""Helpers the tests share: free ports, gRPC-Web by hand, real proxies in front of Envoy."""
