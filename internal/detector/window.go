package detector

import (
	"hash/maphash"
	"slices"
	"strings"
)

// The windows keep only what can still count, in arrays without pointers
// (the garbage collector never scans them): a busy extension of a large PBX
// (6 calls a minute, each to a new number) costs a few hundred bytes, not
// the kilobytes that timestamps and strings kept for the longest window
// would take.

// ring keeps the newest timestamps (unix nanoseconds) of one counter, oldest
// first, at most as many as the highest threshold of its rule: with the
// critical level C, "C events inside the window" is true exactly when the
// C-th newest is inside it, so older timestamps are never needed. It grows
// on demand, so a quiet key costs nothing, and forgets what left the window
// (see since).
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

// since counts the entries at or after t0 and forgets the older ones. Each
// ring is always asked with the start of its rule's window, which only
// moves forward, so a forgotten entry could never count again; a ring left
// with a quarter of its capacity or less gives the larger array back.
func (r *ring) since(t0 int64) int {
	i := len(r.ts)
	for i > 0 && r.ts[i-1] >= t0 {
		i--
	}
	if i > 0 {
		r.ts = keepTail(r.ts, i)
	}
	return len(r.ts)
}

// keepTail returns s[from:] in the same array, or in a fitting new one when
// it uses a quarter of the capacity or less (nil when empty).
func keepTail[T any](s []T, from int) []T {
	n := len(s) - from
	switch {
	case n == 0:
		return nil
	case cap(s) > 8 && n <= cap(s)/4:
		return append(make([]T, 0, 2*n), s[from:]...)
	}
	copy(s, s[from:])
	clear(s[n:])
	return s[:n]
}

// ringSize is how many timestamps a threshold needs.
func ringSize(t Threshold) int { return max(t.Warning, t.Critical) }

// prefixWindow is what prefix_guess remembers of one extension: which
// destinations it dialled behind which prefixes, and when. One entry per
// destination and prefix, at most maxDestsPerExt destinations (the least
// recently dialled gives way) and size prefixes each (the oldest gives
// way); entries older than the window are forgotten.
type prefixWindow struct {
	e []prefixEntry
}

type prefixEntry struct {
	dest, prefix numberKey
	t            int64
}

// notePrefix records that dest was dialled behind prefix and returns how
// many distinct prefixes it was dialled behind within the window.
func (act *extActivity) notePrefix(prefix, dest string, now, window int64, size int) int {
	return act.prefixes.note(prefix, dest, now, window, size)
}

// note records that dest was dialled behind prefix at now and returns how
// many distinct prefixes dest was dialled behind within the window.
func (w *prefixWindow) note(prefix, dest string, now, window int64, size int) int {
	if size <= 0 {
		return 0
	}
	cut := now - window
	w.e = slices.DeleteFunc(w.e, func(e prefixEntry) bool { return e.t < cut })
	dk, pk := keyOf(dest), keyOf(prefix)
	count, found, oldest := 0, -1, -1
	for i := range w.e {
		e := &w.e[i]
		if e.dest != dk {
			continue
		}
		count++
		if e.prefix == pk {
			found = i
		}
		if oldest < 0 || e.t < w.e[oldest].t {
			oldest = i
		}
	}
	switch {
	case found >= 0:
		w.e[found].t = now
		return count
	case count == 0 && len(w.e) >= maxDestsPerExt && w.dests() >= maxDestsPerExt:
		w.dropDest(w.stalestDest())
	case count >= size:
		w.e = slices.Delete(w.e, oldest, oldest+1)
		count--
	}
	w.e = append(w.e, prefixEntry{dest: dk, prefix: pk, t: now})
	if cap(w.e) > 2*maxDestsPerExt && len(w.e) <= cap(w.e)/4 {
		w.e = slices.Clip(slices.Clone(w.e))
	}
	return count + 1
}

// dests counts the distinct destinations.
func (w *prefixWindow) dests() int {
	n := 0
	for i := range w.e {
		if !slices.ContainsFunc(w.e[:i], func(e prefixEntry) bool { return e.dest == w.e[i].dest }) {
			n++
		}
	}
	return n
}

// stalestDest is the destination dialled least recently (whose newest
// entry is the oldest).
func (w *prefixWindow) stalestDest() numberKey {
	var victim numberKey
	var victimLast int64
	for i := range w.e {
		d := w.e[i].dest
		last := int64(0)
		for j := range w.e {
			if w.e[j].dest == d {
				last = max(last, w.e[j].t)
			}
		}
		if i == 0 || last < victimLast {
			victim, victimLast = d, last
		}
	}
	return victim
}

func (w *prefixWindow) dropDest(d numberKey) {
	w.e = slices.DeleteFunc(w.e, func(e prefixEntry) bool { return e.dest == d })
}

// numberKey stands for a string of dialled digits in a window. A string of
// at most 15 characters from "0123456789*#+" (any destination: 4 to 15
// digits; any prefix a dialling plan uses) is packed into it exactly, 4 bits
// a character, so that two keys are equal exactly when the strings are.
// A longer or other string gets a 63-bit hash, seeded per process, with the
// top bit set so it never equals a packed key: two such strings of one
// extension's window are taken for one with a chance of 2^-63.
type numberKey uint64

const numberSymbols = "0123456789*#+"

var numberSeed = maphash.MakeSeed()

func keyOf(s string) numberKey {
	if len(s) <= 15 {
		var k numberKey
		for i := 0; i < len(s); i++ {
			c := strings.IndexByte(numberSymbols, s[i])
			if c < 0 {
				return hashedKey(s)
			}
			k |= numberKey(c+1) << (4 * i)
		}
		return k
	}
	return hashedKey(s)
}

func hashedKey(s string) numberKey {
	return numberKey(maphash.String(numberSeed, s)) | 1<<63
}
