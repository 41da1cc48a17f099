"""``llmsched engine-sim calibrate``: measure a real engine and fit the simulator's timing to it."""
