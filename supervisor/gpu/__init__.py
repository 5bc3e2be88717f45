"""GPU health through NVML: the Xid table, the NVML seam, the monitor thread."""
