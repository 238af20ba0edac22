"""The strategies: search for the best arch under constraints (evolution, ProxylessNAS)."""
