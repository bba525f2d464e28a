package ami

import (
	"slices"
	"strings"
)

// amigoLineLimit is the size of the bufio.Reader amigo v0.1.10 reads lines
// with. A longer line comes back in pieces and amigo parses each piece as a
// header of its own (defect 4): a value whose line reaches the limit was cut,
// and the rest of its line may have overridden a real header.
const amigoLineLimit = 4096

// SetMap fills m with a message delivered as a map (amigo's form): the Event
// or Response header first, then the others in key order, one "Key: Value"
// line each, so Decode and Raw work on it as on a message read from the wire.
// Keys for which drop returns true are left out (amigo adds "#" and
// "TimeReceived"). Keys or values holding CR or LF are left out too: they
// cannot have come from one AMI line.
//
// It reports whether the message can be trusted: false when a header's line
// reached amigo's 4096-byte read limit, so the map may hold a forged header
// made of the cut-off tail of a long value (a caller name, say).
func (m *Message) SetMap(kv map[string]string, drop func(string) bool) (trusted bool) {
	return m.setMap(kv, drop, true)
}

// SetMapUnordered is SetMap without putting the headers in order: Decode
// does not need it, and sorting every message is a measurable share of the
// live path's CPU. Raw then lists the headers in the map's random order.
func (m *Message) SetMapUnordered(kv map[string]string, drop func(string) bool) (trusted bool) {
	return m.setMap(kv, drop, false)
}

func (m *Message) setMap(kv map[string]string, drop func(string) bool, ordered bool) (trusted bool) {
	m.reset()
	trusted = true
	keys := make([]string, 0, len(kv))
	for k, v := range kv {
		if drop != nil && drop(k) {
			continue
		}
		if len(k)+len(v)+2 >= amigoLineLimit-2 {
			trusted = false
		}
		if k == "" || strings.ContainsAny(k, "\r\n:") || strings.ContainsAny(v, "\r\n") {
			continue
		}
		keys = append(keys, k)
	}
	if ordered {
		slices.SortFunc(keys, func(a, b string) int {
			if ra, rb := firstRank(a), firstRank(b); ra != rb {
				return ra - rb
			}
			return strings.Compare(a, b)
		})
	}
	for _, k := range keys {
		v := kv[k]
		k0 := len(m.buf)
		m.buf = append(m.buf, k...)
		k1 := len(m.buf)
		m.buf = append(m.buf, ": "...)
		v0 := len(m.buf)
		m.buf = append(m.buf, v...)
		v1 := len(m.buf)
		m.buf = append(m.buf, "\r\n"...)
		m.hdrs = append(m.hdrs, span{int32(k0), int32(k1), int32(v0), int32(v1)})
	}
	m.buf = append(m.buf, "\r\n"...)
	return trusted
}

// firstRank puts Event and Response first, as on the wire.
func firstRank(k string) int {
	if equalFoldString(k, "Event") || equalFoldString(k, "Response") {
		return 0
	}
	return 1
}
