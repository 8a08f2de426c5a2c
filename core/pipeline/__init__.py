"""The whole method in one run: every stage in order from one YAML, each as the job its tab or command runs."""
