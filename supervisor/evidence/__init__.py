"""What the machine knew about a failed attempt: OOM kills (memory cgroup, kernel log), /dev/shm, the tree's memory."""
