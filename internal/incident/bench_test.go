package incident

import (
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// busyBook is a book in enforce mode with n open incidents of extensions
// (SIP/1000...) that have hung up, blocked and rotated, each with its
// alerts list full; obs, if set, observes it.
func busyBook(b *testing.B, n int, store Store, obs Observer) (*Book, *policy.Table) {
	book := mustBook(b, Options{Quiet: time.Hour, Mode: policy.Enforce, Store: store, Observer: obs})
	r := newResponder(b, book)
	for i := range n {
		for j := range maxAlerts {
			a := critical(detector.RuleCallRate, t0.Add(time.Duration(j)*time.Second), netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
			a.Extension = strconv.Itoa(1000 + i)
			r.alert(a)
		}
	}
	return book, r.tab
}

// queueObserver is an observer as the notifier's: a send to a bounded
// queue that drops when it is full, never a wait.
func queueObserver() Observer {
	q := make(chan Event, 1024)
	return func(ev Event) {
		select {
		case q <- ev:
		default:
		}
	}
}

// The per-alert path: an alert of an open incident that has done
// everything (what an attack keeps raising): nothing to save.
func BenchmarkDecide(b *testing.B) { benchmarkDecide(b, nil) }

// The same with an observer (a notifier): the alert tells it nothing.
func BenchmarkDecideObserved(b *testing.B) { benchmarkDecide(b, queueObserver()) }

func benchmarkDecide(b *testing.B, obs Observer) {
	book, tab := busyBook(b, 100, &memStore{}, obs)
	a := critical(detector.RulePrefixGuess, t0.Add(time.Minute), netip.AddrFrom4([4]byte{10, 0, 0, 0}))
	a.Extension = "1000"
	dst := make([]policy.Decision, 0, 8)
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if dst = book.Decide(tab, a, now, dst[:0]); len(dst) != 1 {
			b.Fatal(len(dst))
		}
	}
}

// The alert that opens an incident and decides its responses, and the save
// the guard makes before the rotation (encoded; the store keeps it in
// memory), in a book with 100 other incidents, each with its 10 alerts.
func BenchmarkDecideOpens(b *testing.B) { benchmarkDecideOpens(b, nil) }

// The same with an observer, told of the opening and of the release.
func BenchmarkDecideOpensObserved(b *testing.B) { benchmarkDecideOpens(b, queueObserver()) }

func benchmarkDecideOpens(b *testing.B, obs Observer) {
	book, tab := busyBook(b, 100, &memStore{}, obs)
	a := critical(detector.RuleCallRate, t0.Add(time.Minute), netip.AddrFrom4([4]byte{10, 1, 0, 0}))
	a.Extension = "9999"
	key := policy.KeyOf(a)
	dst := make([]policy.Decision, 0, 8)
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if dst = book.Decide(tab, a, now, dst[:0]); len(dst) != 4 {
			b.Fatal(len(dst))
		}
		if err := book.Flush(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := book.Release(key, now); err != nil {
			b.Fatal(err)
		}
		book.mu.Lock()
		book.closed = book.closed[:len(book.closed)-1]
		delete(book.byID, dst[0].Incident)
		book.mu.Unlock()
		b.StartTimer()
	}
}

// The per-Newchannel path: is the extension stopped? With 1000 stopped
// extensions, for one of them and for one that is not, and with none (the
// usual case).
func BenchmarkStopped(b *testing.B) {
	busy, _ := busyBook(b, 1000, nil, nil)
	empty := mustBook(b, Options{Mode: policy.Enforce})
	now := t0.Add(time.Minute)
	for _, tt := range []struct {
		name string
		book *Book
		ext  string
		want bool
	}{{"stopped", busy, "1500", true}, {"not-stopped", busy, "200", false}, {"none-stopped", empty, "200", false}} {
		book := tt.book
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := book.Stopped(ami.TechSIP, tt.ext, now); ok != tt.want {
					b.Fatal(ok)
				}
			}
		})
	}
}
