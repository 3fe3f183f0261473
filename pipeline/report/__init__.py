"""`tracelake report`: one self-contained HTML page per run, read from the run's own SQL
views (so its numbers are the ones `tracelake sql` gives), with charts drawn offline."""
