package guard

// SessionStats are the event session's counters the load generator reads.
type SessionStats struct {
	Received uint64 // events read on the event session, list items and skipped events included
	Queued   uint64 // events queued for the detector
	Dropped  uint64 // events dropped because the queue to the detector was full
}

// SessionStats returns the event session's counters.
func (g *Guard) SessionStats() SessionStats {
	s := SessionStats{Queued: g.stats.queued.Load(), Dropped: g.stats.dropped.Load()}
	if g.events != nil {
		s.Received = g.events.Stats().Events
	}
	return s
}

// QueueLen is how many events wait for the detector loop now.
func (g *Guard) QueueLen() int { return len(g.queue) }
