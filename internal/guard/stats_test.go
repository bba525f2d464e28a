package guard

// Test helpers: the event session's counters, read by the tests of the AMI
// link. The guard itself shows them as metrics (astguard_events_total,
// astguard_events_dropped_total, astguard_queue_depth).

// sessionCounts are the event session's counters.
type sessionCounts struct {
	Received uint64 // events read on the event session, list items and skipped events included
	Queued   uint64 // events queued for the detector
	Dropped  uint64 // events dropped because the queue to the detector was full
}

// sessionStats returns the event session's counters.
func (g *Guard) sessionStats() sessionCounts {
	s := sessionCounts{Queued: g.stats.queued.Load(), Dropped: g.stats.dropped.Load()}
	if g.events != nil {
		s.Received = g.events.Stats().Events
	}
	return s
}
