package detector_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// busyPBX is the load generator's legitimate traffic as typed events: n
// registered SIP extensions, each placing a call every 10 s (6 a minute) to
// a national number it has not dialled before, authenticated by a
// SuccessfulAuth with its password (UsingPassword 1, as a SIP INVITE's
// digest is) and hung up 4 s later. At 100,000 AMI events/s the load
// generator runs 43,000 such extensions. Its strings are made once, so
// feeding it allocates nothing of its own.
type busyPBX struct {
	names, channels, uids []string
	addrs                 []netip.Addr
	numbers               []string
	start                 time.Time
	i                     int // events fed
	ev                    ami.Event
}

func newBusyPBX(n int) *busyPBX {
	p := &busyPBX{start: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	for i := range n {
		name := fmt.Sprint(10000 + i)
		p.names = append(p.names, name)
		p.channels = append(p.channels, fmt.Sprintf("SIP/%s-%08x", name, i))
		p.uids = append(p.uids, fmt.Sprintf("1795610000.%d", i))
		p.addrs = append(p.addrs, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 4093 { // prime: extension and round never meet the same number twice in 10 minutes
		p.numbers = append(p.numbers, fmt.Sprintf("020%08d", rng.IntN(100_000_000)))
	}
	return p
}

// eventsPerRound is what one round (10 s: one call of every extension) feeds.
func (p *busyPBX) eventsPerRound() int { return 3 * len(p.names) }

// next returns the next event: per round, each extension's SuccessfulAuth
// and Newchannel, spread over the 10 s, and the Hangup of its previous call.
func (p *busyPBX) next() *ami.Event {
	n := len(p.names)
	round, k := p.i/(3*n), p.i%(3*n)
	ext, step := k/3, k%3
	p.i++
	at := p.start.Add(time.Duration(round)*10*time.Second + time.Duration(ext)*10*time.Second/time.Duration(n))
	ev := &p.ev
	*ev = ami.Event{}
	switch step {
	case 0: // the previous call, hung up
		if round == 0 {
			ev.Kind, ev.Time = ami.KindUnknown, at
			return ev
		}
		ev.Kind, ev.Channel, ev.Uniqueid, ev.Linkedid, ev.Cause = ami.KindHangup, p.channels[ext], p.uids[ext], p.uids[ext], 16
		ev.Time = at
	case 1:
		ev.Kind, ev.Security, ev.Service, ev.AccountID, ev.RemoteAddr, ev.RemotePort = ami.KindSecurity, ami.SecSuccessfulAuth, "SIP", p.names[ext], p.addrs[ext], 5060
		ev.UsingPassword = true
		ev.Time = at
	case 2:
		ev.Kind, ev.Channel, ev.Uniqueid, ev.Linkedid = ami.KindNewchannel, p.channels[ext], p.uids[ext], p.uids[ext]
		ev.Exten = p.numbers[(ext*61+round)%len(p.numbers)]
		ev.Time = at
	}
	return ev
}

// TestMemoryBusyExtensions runs 2,000 busy extensions for 10 minutes of
// event time (every window of the default rules full) and checks what one
// costs, then that a prefix hunt by one of them is still caught on its
// third prefix. At 43,000 such extensions (100,000 events/s) the guard must
// stay under 256 MiB of resident memory, with Go's garbage collector
// letting the heap grow to twice what is live, and the rest of the guard:
// the detector gets at most 1.5 KiB an extension (63 MiB).
func TestMemoryBusyExtensions(t *testing.T) {
	p := newBusyPBX(2000)
	base := heapInuse()
	d := detector.New(detector.Default())
	var out []detector.Alert
	for range 60 * p.eventsPerRound() {
		out = d.Process(p.next(), out[:0])
		if len(out) > 0 {
			t.Fatalf("ordinary calls raised %s for %s", out[0].Rule, out[0].Extension)
		}
	}
	used := heapInuse() - base
	per := float64(used) / float64(len(p.names))
	t.Logf("2,000 extensions after 10 minutes of 6 calls a minute: heap in use %.2f MiB, %.0f bytes an extension (%.1f MiB for 43,000); %+v",
		float64(used)/(1<<20), per, per*43000/(1<<20), d.Stats())
	if per > 1536 {
		t.Errorf("%.0f bytes an extension, want at most 1536", per)
	}

	// 10001 dials one destination behind a third prefix within the window.
	now := p.ev.Time
	caught := false
	for i, num := range []string{"0044" + "20794600", "001144" + "20794600", "01144" + "20794600"} {
		now = now.Add(time.Second)
		uid := fmt.Sprintf("1795619999.%d", i)
		ev := ami.Event{Kind: ami.KindNewchannel, Time: now, Channel: fmt.Sprintf("SIP/10001-ff%06x", i), Uniqueid: uid, Linkedid: uid, Exten: num}
		for _, a := range d.Process(&ev, out[:0]) {
			caught = caught || (a.Rule == detector.RulePrefixGuess && a.Severity == detector.Critical && a.Extension == "10001" && i == 2)
		}
	}
	if !caught {
		t.Error("a prefix hunt by a busy extension was not caught on its third prefix")
	}
	runtime.KeepAlive(d)
}

// BenchmarkBusyPBX feeds the busy extensions of a 100,000 events/s load
// (43,000 of them) to a detector that starts empty: run with
// -benchtime=7740000x for the first 10 minutes of event time, while every
// window fills. heap-MiB is the heap in use at the end.
func BenchmarkBusyPBX(b *testing.B) {
	p := newBusyPBX(43000)
	base := heapInuse()
	d := detector.New(detector.Default())
	out := make([]detector.Alert, 0, 16)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		out = d.Process(p.next(), out[:0])
	}
	b.StopTimer()
	b.ReportMetric(float64(heapInuse()-base)/(1<<20), "heap-MiB")
	runtime.KeepAlive(d)
}
