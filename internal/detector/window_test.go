package detector

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// refPrefixes is prefix_guess's memory as first written: per destination
// (at most maxDestsPerExt, the least recently dialled replaced) the
// prefixes seen within the window (at most size, the oldest replaced), as
// strings. prefixWindow must count exactly as it does.
type refPrefixes struct {
	dests []refDest
}

type refDest struct {
	dest     string
	last     int64
	prefixes map[string]int64
}

func (r *refPrefixes) note(prefix, dest string, now, window int64, size int) int {
	cut := now - window
	var de *refDest
	for i := range r.dests {
		if r.dests[i].dest == dest {
			de = &r.dests[i]
		}
	}
	if de == nil {
		if len(r.dests) < maxDestsPerExt {
			r.dests = append(r.dests, refDest{})
			de = &r.dests[len(r.dests)-1]
		} else {
			de = &r.dests[0]
			for i := range r.dests {
				if r.dests[i].last < de.last {
					de = &r.dests[i]
				}
			}
		}
		*de = refDest{dest: dest, prefixes: map[string]int64{}}
	}
	de.last = now
	for p, t := range de.prefixes {
		if t < cut {
			delete(de.prefixes, p)
		}
	}
	if _, ok := de.prefixes[prefix]; !ok && len(de.prefixes) >= size {
		oldest, first := "", true
		for p, t := range de.prefixes {
			if first || t < de.prefixes[oldest] {
				oldest, first = p, false
			}
		}
		delete(de.prefixes, oldest)
	}
	de.prefixes[prefix] = now
	return len(de.prefixes)
}

// TestPrefixWindowMatchesReference dials random destinations behind random
// prefixes at random intervals around the window, with more destinations
// than are remembered, and checks every count against the reference.
func TestPrefixWindowMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	prefixes := []string{"", "0", "00", "0044", "001144", "011", "+44", "9011972", "*67", "0000000000000000000044"}
	window := int64(10 * time.Minute)
	for run := range 200 {
		var w prefixWindow
		var ref refPrefixes
		size := 1 + run%5
		nDests := 4 + run%30
		now := int64(0)
		for step := range 400 {
			now += 1 + rng.Int64N(window/4)
			p := prefixes[rng.IntN(len(prefixes))]
			d := strings.Repeat("7", rng.IntN(3)) + string(rune('0'+rng.IntN(10))) + "2079460" + string(rune('0'+rng.IntN(nDests%10+1)))
			got, want := w.note(p, d, now, window, size), ref.note(p, d, now, window, size)
			if got != want {
				t.Fatalf("run %d step %d: %q behind %q counts %d, want %d", run, step, d, p, got, want)
			}
			if w.dests() > maxDestsPerExt || len(w.e) > maxDestsPerExt*size {
				t.Fatalf("run %d step %d: %d destinations, %d entries", run, step, w.dests(), len(w.e))
			}
		}
	}
}

// TestNumberKey: packed keys are equal exactly when the strings are;
// strings that cannot be packed get hashed keys, never equal to a packed one.
func TestNumberKey(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	rnd := func() string {
		b := make([]byte, rng.IntN(17))
		for i := range b {
			b[i] = numberSymbols[rng.IntN(len(numberSymbols))]
		}
		return string(b)
	}
	seen := map[numberKey]string{}
	for range 200_000 {
		s := rnd()
		k := keyOf(s)
		if (k>>63 == 1) != (len(s) > 15) {
			t.Fatalf("%q: key %x", s, uint64(k))
		}
		if o, ok := seen[k]; ok && o != s {
			t.Fatalf("%q and %q share key %x", s, o, uint64(k))
		}
		seen[k] = s
	}
	for _, s := range []string{"0", "00", "000", "#", "0#", "#0"} {
		if keyOf(s) == keyOf(s+"0") {
			t.Fatalf("%q and %q share a key", s, s+"0")
		}
	}
	if keyOf("12a") == keyOf("12") || keyOf("12a")>>63 != 1 {
		t.Error("a string with another character is not hashed apart")
	}
}

// TestRingForgets: a ring keeps only what its window holds, and gives back
// the array a burst made it grow to.
func TestRingForgets(t *testing.T) {
	const window = int64(time.Minute)
	var r ring
	now := int64(0)
	for range 60 { // a burst: 60 in a second
		now += int64(time.Second) / 60
		r.add(now, 60)
		if n := r.since(now - window); n != len(r.ts) {
			t.Fatalf("counted %d of %d kept", n, len(r.ts))
		}
	}
	if len(r.ts) != 60 {
		t.Fatalf("burst: %d kept, want 60", len(r.ts))
	}
	for i := range 600 { // then one every 10 s
		now += int64(10 * time.Second)
		r.add(now, 60)
		n := r.since(now - window)
		if i > 6 && (n != 7 || len(r.ts) != 7 || cap(r.ts) > 16) {
			t.Fatalf("after %d calls 10 s apart: %d counted, %d kept, capacity %d", i+1, n, len(r.ts), cap(r.ts))
		}
	}
	if !slices.IsSorted(r.ts) {
		t.Fatal("not oldest first")
	}
}

// TestSample: the newest distinct strings, at most maxSample, oldest first,
// whatever their length.
func TestSample(t *testing.T) {
	var s sample
	long := strings.Repeat("x", 300) // a length of two uvarint bytes
	in := []string{"a", "", "b", "a", long, "c", "d", "e", "f", "g", "h", "b", "i"}
	var want []string
	for _, v := range in {
		s.add(v)
		if v != "" && !slices.Contains(want, v) {
			want = append(want, v)
			if len(want) > maxSample {
				want = want[1:]
			}
		}
		if got := s.list(); !slices.Equal(got, want) {
			t.Fatalf("after %q: %q, want %q", v, got, want)
		}
	}
	var empty *sample
	if empty.list() != nil || (&sample{}).list() != nil {
		t.Error("an empty sample lists something")
	}
}
