"""The local Kubernetes control plane for e2e tests and the demo: build, up, down, env."""
