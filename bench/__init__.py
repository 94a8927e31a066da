"""Weir benchmarks: side by side against kube-proxy-shaped iptables (docs/benchmarks.md)."""
