"""The `mitosis` command: a thin command line over `mitosis.client`."""
