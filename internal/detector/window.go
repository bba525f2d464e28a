package detector

// ring keeps the newest timestamps (unix nanoseconds) of one counter, at most
// as many as the highest threshold of its rule: with the critical level C,
// "C events inside the window" is true exactly when the C-th newest is inside
// it, so older timestamps are never needed. It grows on demand, so a quiet
// key costs nothing, and never allocates once full.
type ring struct {
	ts   []int64
	head int // index of the oldest entry once full
}

// add records t, keeping at most size entries.
func (r *ring) add(t int64, size int) {
	if size <= 0 {
		return
	}
	if len(r.ts) < size {
		r.ts = append(r.ts, t)
		return
	}
	r.ts[r.head] = t
	r.head++
	if r.head == len(r.ts) {
		r.head = 0
	}
}

// since counts the entries at or after t0, walking from the newest.
func (r *ring) since(t0 int64) int {
	n := len(r.ts)
	if n == 0 {
		return 0
	}
	c := 0
	// newest entry is just before head (head is the oldest once full; while
	// growing, head is 0 and the newest is the last).
	i := r.head - 1
	if i < 0 {
		i = n - 1
	}
	for range n {
		if r.ts[i] < t0 {
			break
		}
		c++
		i--
		if i < 0 {
			i = n - 1
		}
	}
	return c
}

// newest returns the newest timestamp or 0.
func (r *ring) newest() int64 {
	if len(r.ts) == 0 {
		return 0
	}
	i := r.head - 1
	if i < 0 {
		i = len(r.ts) - 1
	}
	return r.ts[i]
}

func (r *ring) reset() {
	r.ts = r.ts[:0]
	r.head = 0
}

// ringSize is how many timestamps a threshold needs.
func ringSize(t Threshold) int { return max(t.Warning, t.Critical) }
