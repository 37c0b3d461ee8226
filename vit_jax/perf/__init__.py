"""Performance accounting: FLOPs and memory traffic from compiled HLO, analytic model FLOPs,
accelerator peaks, utilization (MFU), compiled memory of attention schedules, profiles."""
