"""jit's effects: RQ jobs, the expiry scheduler, and the grant backends."""
