"""One way to call Charter's services: a channel factory and typed clients (also the public API)."""
