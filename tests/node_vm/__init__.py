"""The node-VM test layer: a booted Debian 12 node (see tests/test_node_vm.py)."""
