"""The Ray executor: task bodies run as Ray tasks, locally or on a cluster (issue 3)."""
