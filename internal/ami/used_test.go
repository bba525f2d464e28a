package ami

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestUsedEvent(t *testing.T) {
	for name, want := range map[string]bool{
		"Newchannel": true, "DIALBEGIN": true, "Dial": true, "Hangup": true, "PeerStatus": true,
		"ContactStatus": true, "FullyBooted": true, "InvalidPassword": true, "challengesent": true,
		"SessionLimit": true, "UnexpectedAddress": true, "InvalidTransport": true,
		"VarSet": false, "Newexten": false, "Cdr": false, "BridgeEnter": false, "HangupRequest": false,
		"": false, "Newchannel ": false,
	} {
		if got := UsedEvent([]byte(name)); got != want {
			t.Errorf("UsedEvent(%q) = %v, want %v", name, got, want)
		}
	}
}

// Every event of the recordings that Decode takes has a name UsedEvent
// keeps, and every event it rejects there is one UsedEvent lets go.
func TestUsedEventCoversDecode(t *testing.T) {
	var used, skipped int
	for _, file := range []string{"attack-mixed.ami", "after-rotation.ami", "hangup-events.ami", "pjsip-bruteforce.ami"} {
		r := NewReader(bytes.NewReader(readFixture(t, file)), ReaderOptions{})
		if _, err := r.ReadBanner(); err != nil {
			t.Fatal(err)
		}
		var (
			m  Message
			ev Event
		)
		for {
			err := r.Next(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if !m.IsEvent() {
				continue
			}
			name := m.Value(0)
			decoded := Decode(&m, &ev) || bytes.EqualFold(name, []byte("Dial")) // Dial with another SubEvent
			if decoded != UsedEvent(name) {
				t.Errorf("%s: event %s: decoded %v, UsedEvent %v", file, name, decoded, UsedEvent(name))
			}
			if decoded {
				used++
			} else {
				skipped++
			}
		}
	}
	if used < 500 || skipped < 5000 {
		t.Errorf("%d events used, %d not", used, skipped)
	}
}

func BenchmarkUsedEvent(b *testing.B) {
	names := [][]byte{[]byte("VarSet"), []byte("Newexten"), []byte("Newchannel"), []byte("InvalidPassword"), []byte("BridgeEnter")}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		for _, name := range names {
			if UsedEvent(name) {
				n++
			}
		}
	}
	if n == 0 {
		b.Fatal("nothing used")
	}
}
