"""Ray Serve applications for declared pipelines (lifecycle step 6)."""
