"""The CardVault control plane: one package per domain, layered as the README's design notes describe."""
