package detector

// ring keeps the newest timestamps (unix nanoseconds) of one counter, oldest
// first, at most as many as the highest threshold of its rule: with the
// critical level C, "C events inside the window" is true exactly when the
// C-th newest is inside it, so older timestamps are never needed. It grows
// on demand, so a quiet key costs nothing, and never allocates once full
// (a full ring shifts: at most a few hundred bytes moved).
type ring struct {
	ts []int64
}

// add records t, keeping at most size entries.
func (r *ring) add(t int64, size int) {
	switch {
	case size <= 0:
		return
	case len(r.ts) < size:
		r.ts = append(r.ts, t)
	default:
		n := copy(r.ts, r.ts[len(r.ts)-size+1:])
		r.ts = r.ts[:n+1]
		r.ts[n] = t
	}
}

// since counts the entries at or after t0, walking from the newest.
func (r *ring) since(t0 int64) int {
	c := 0
	for i := len(r.ts) - 1; i >= 0 && r.ts[i] >= t0; i-- {
		c++
	}
	return c
}

// ringSize is how many timestamps a threshold needs.
func ringSize(t Threshold) int { return max(t.Warning, t.Critical) }
