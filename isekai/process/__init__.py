"""Process plumbing shared by the master, the workers and the admin process."""
