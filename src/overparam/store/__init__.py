"""The run store: files written atomically and checksummed (`files`), results as content-addressed steps
(`steps`), and executors that compute any set of steps in dependency order (`executors`)."""
