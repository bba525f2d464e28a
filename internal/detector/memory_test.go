package detector_test

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

func heapInuse() uint64 {
	runtime.GC()
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// 100,000 registered extensions, one in ten making a call, then a flood of
// 300,000 distinct attacking addresses with a real attack in the middle: the
// detector's memory stays under 64 MiB, does not grow with the flood once
// the caps are reached, the attack is caught, and once the flood has expired
// the memory it held is given back.
//
// The registrations fill the extensions' cap (100,000), the flood's first
// 50,000 addresses the addresses' cap: from then on every new address
// evicts one, and by 100,000 the maps have reached their size. A longer
// flood would only repeat that, slowly under the race detector: the heap
// measured there and again at the end shows a leak per eviction as well
// as a million addresses against the 64 MiB goal would.
func TestMemoryUnderFlood(t *testing.T) {
	base := heapInuse()
	d := detector.New(detector.Default())
	var out []detector.Alert
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	ev := ami.Event{}
	send := func(e ami.Event) {
		e.Time = now
		out = d.Process(&e, out[:0])
	}
	for i := range 100_000 {
		name := fmt.Sprintf("%d", 100000+i)
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		send(ami.Event{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "PJSIP", AccountID: name, RemoteAddr: ip, RemotePort: 5060})
		if i%10 != 0 {
			continue
		}
		uid := fmt.Sprintf("1795610000.%d", i)
		send(ami.Event{Kind: ami.KindNewchannel, Channel: fmt.Sprintf("PJSIP/%s-%08x", name, i), Uniqueid: uid, Linkedid: uid, Exten: "02079460123"})
		send(ami.Event{Kind: ami.KindHangup, Channel: fmt.Sprintf("PJSIP/%s-%08x", name, i), Uniqueid: uid, Linkedid: uid, Cause: 16})
		now = now.Add(10 * time.Millisecond)
	}
	_ = ev
	var full uint64
	caught := false
	for i := range 300_000 {
		if i == 100_000 {
			if st := d.Stats(); st.Extensions != detector.Default().MaxExtensions || st.Addresses != detector.Default().MaxAddresses {
				t.Fatalf("the caps are not reached after 100,000 flood addresses: %+v", st)
			}
			full = heapInuse() - base
		}
		ip := netip.AddrFrom4([4]byte{100, byte(i >> 16), byte(i >> 8), byte(i)})
		send(ami.Event{Kind: ami.KindSecurity, Security: ami.SecChallengeResponseFailed, Service: "PJSIP", AccountID: "admin",
			SessionID: fmt.Sprintf("%d@x", i), RemoteAddr: ip, RemotePort: 5060})
		if i%1000 == 0 {
			now = now.Add(100 * time.Millisecond)
		}
		if i == 150_000 { // the real attacker, in the middle of the flood
			for j := range 5 {
				send(ami.Event{Kind: ami.KindSecurity, Security: ami.SecInvalidPassword, Service: "SIP", AccountID: "200",
					SessionID: "0x1", RemoteAddr: netip.MustParseAddr("198.51.100.1"), RemotePort: 5060 + uint16(j)})
			}
			for _, a := range out {
				caught = caught || (a.IP == netip.MustParseAddr("198.51.100.1") && a.Severity == detector.Critical)
			}
		}
	}
	peak := heapInuse() - base
	if f := os.Getenv("ASTGUARD_MEMPROFILE"); f != "" {
		if fh, err := os.Create(f); err == nil {
			_ = pprof.WriteHeapProfile(fh)
			fh.Close()
		}
	}
	st := d.Stats()
	t.Logf("caps reached: heap in use %.1f MiB; after a 300k-address flood: %.1f MiB, %+v", float64(full)/(1<<20), float64(peak)/(1<<20), st)
	if !caught {
		t.Error("the real attack in the middle of the flood was not caught")
	}
	if peak > 64<<20 {
		t.Errorf("detector holds %.1f MiB, goal under 64 MiB", float64(peak)/(1<<20))
	}
	// 2 MiB over the last 200,000 evictions: a leak of 11 bytes or more per
	// evicted address shows.
	if grew := int64(peak) - int64(full); grew > 2<<20 {
		t.Errorf("the heap grew by %.1f MiB during the flood, with the caps reached before it", float64(grew)/(1<<20))
	}
	// The flood ends; an hour later its state has expired.
	now = now.Add(2 * time.Hour)
	send(ami.Event{Kind: ami.KindSecurity, Security: ami.SecSuccessfulAuth, Service: "PJSIP", AccountID: "100000", RemoteAddr: netip.MustParseAddr("10.0.0.0")})
	after := heapInuse() - base
	t.Logf("after the flood expired: heap in use %.1f MiB, %+v", float64(after)/(1<<20), d.Stats())
	if after > peak/4 {
		t.Errorf("memory not given back: %.1f MiB of %.1f MiB still held", float64(after)/(1<<20), float64(peak)/(1<<20))
	}
	runtime.KeepAlive(d)
}
