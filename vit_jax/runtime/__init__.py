"""What a run needs from its hosts: meshes and sharding rules, processes, CPU devices and
tcmalloc, the bound on queued steps, preemption, the workdir it owns and keeps."""
