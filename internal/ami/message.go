package ami

// Message is one AMI message: its header lines in the order received,
// repeated keys kept.
//
// A Message's storage is one byte buffer holding the message exactly as
// received plus a list of offsets into it; a [Reader] reuses both on every
// call to Next, so reading does not allocate once they have grown to the
// largest message seen. Slices returned by Key, Value, GetBytes and Raw alias
// that buffer and are valid until the next Next into the same Message; Get and
// Values return copies.
//
// The zero Message is empty and ready to use.
type Message struct {
	buf  []byte // the message as received
	hdrs []span
	// out holds the key "Output" for the text lines of a Response: Follows
	// message, which have no key of their own on the wire.
	out [len(outputKey)]byte
}

// span locates one header in Message.buf. k0 < 0 marks a synthetic Output
// key (see Message.out).
type span struct{ k0, k1, v0, v1 int32 }

const outputKey = "Output"

func (m *Message) reset() {
	m.buf = m.buf[:0]
	m.hdrs = m.hdrs[:0]
}

// Len returns the number of headers.
func (m *Message) Len() int { return len(m.hdrs) }

// Key returns the i-th header's key, trimmed of blanks. It panics if i is out
// of range, like a slice index.
func (m *Message) Key(i int) []byte {
	h := m.hdrs[i]
	if h.k0 < 0 {
		copy(m.out[:], outputKey)
		return m.out[:len(outputKey):len(outputKey)]
	}
	return m.buf[h.k0:h.k1:h.k1]
}

// Value returns the i-th header's value: the text after the first colon with
// one leading space removed. It panics if i is out of range.
func (m *Message) Value(i int) []byte {
	h := m.hdrs[i]
	return m.buf[h.v0:h.v1:h.v1]
}

// keyIs reports whether header h's key equals key, ignoring ASCII case.
func (m *Message) keyIs(h span, key string) bool {
	if h.k0 < 0 {
		return equalFoldString(outputKey, key)
	}
	return equalFold(m.buf[h.k0:h.k1], key)
}

// GetBytes returns the value of the first header named key (ASCII case
// ignored), or nil if there is none. A present but empty value is a non-nil
// empty slice. The result aliases the message buffer.
func (m *Message) GetBytes(key string) []byte {
	for _, h := range m.hdrs {
		if m.keyIs(h, key) {
			return m.buf[h.v0:h.v1:h.v1]
		}
	}
	return nil
}

// Get returns a copy of the value of the first header named key (ASCII case
// ignored), or "" if there is none.
func (m *Message) Get(key string) string { return string(m.GetBytes(key)) }

// Has reports whether the message has a header named key (ASCII case ignored).
func (m *Message) Has(key string) bool { return m.GetBytes(key) != nil }

// Values returns copies of the values of every header named key (ASCII case
// ignored), in order, or nil if there is none.
func (m *Message) Values(key string) []string {
	var vs []string
	for _, h := range m.hdrs {
		if m.keyIs(h, key) {
			vs = append(vs, string(m.buf[h.v0:h.v1]))
		}
	}
	return vs
}

// Raw returns the message's bytes as received: every line with its line
// ending, the closing empty line included. Empty lines that came before the
// message (between messages) are not part of it. The result aliases the
// message buffer.
func (m *Message) Raw() []byte { return m.buf[:len(m.buf):len(m.buf)] }

// IsEvent reports whether the first header is Event (ASCII case ignored).
func (m *Message) IsEvent() bool { return m.firstKeyIs("Event") }

// IsResponse reports whether the first header is Response (ASCII case ignored).
func (m *Message) IsResponse() bool { return m.firstKeyIs("Response") }

func (m *Message) firstKeyIs(key string) bool {
	return len(m.hdrs) > 0 && m.keyIs(m.hdrs[0], key)
}

// lower returns c in lower case if it is an ASCII upper-case letter.
func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// equalFold reports whether b and s are equal ignoring ASCII case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if c, d := b[i], s[i]; c != d && lower(c) != lower(d) {
			return false
		}
	}
	return true
}

func equalFoldString(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if c, d := a[i], b[i]; c != d && lower(c) != lower(d) {
			return false
		}
	}
	return true
}
