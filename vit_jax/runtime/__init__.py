"""What a run needs from its host and its peers: processes, the workdir it owns."""
