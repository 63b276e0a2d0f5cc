"""laconic-helm: Helm releases for an Agave node behind Caddy that converge on every re-run."""

__version__ = "0.1.0"
