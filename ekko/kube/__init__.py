"""The only code that talks to the Kubernetes API; it converts the client's errors into ekko errors."""
