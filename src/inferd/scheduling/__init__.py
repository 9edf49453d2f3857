"""How requests wait, group and run: instance pools and the dynamic batcher."""
