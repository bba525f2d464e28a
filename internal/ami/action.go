package ami

import (
	"errors"
	"strconv"
)

// Header is one header of an action or of a reply, in order.
type Header struct{ Key, Value string }

// Action is an AMI action: its name and its headers, without Action and
// ActionID (the client adds both).
type Action struct {
	Name    string
	Headers []Header
}

// ErrUnsafe marks an action refused before anything was written: a name or
// key that is not a plain token, a value with CR, LF or another control
// character (it would end the line and let the rest forge headers or a whole
// second action), or a line longer than Asterisk reads.
var ErrUnsafe = errors.New("ami: unsafe action")

// MaxActionLine is the longest action line AppendAction writes, line ending
// included: Asterisk reads action lines into a 1025-byte buffer and drops
// the whole action when a line does not fit.
const MaxActionLine = 1024

// UnsafeError says which part of an action was refused. It wraps ErrUnsafe.
type UnsafeError struct {
	Action string // the action's name as given (quoted in Error)
	Key    string // the header refused; "" when the name itself is
	Reason string
}

func (e *UnsafeError) Error() string {
	if e.Key == "" {
		return "ami: unsafe action name " + strconv.Quote(e.Action) + ": " + e.Reason
	}
	return "ami: unsafe " + strconv.Quote(e.Action) + " header " + strconv.Quote(e.Key) + ": " + e.Reason
}

// Unwrap returns ErrUnsafe.
func (e *UnsafeError) Unwrap() error { return ErrUnsafe }

// AppendAction appends the wire form of a with the given ActionID to dst:
// `Action: <name>`, `ActionID: <id>`, the headers in order (repeated keys
// kept), and the closing empty line. Names and keys must be 1 to 64 letters,
// digits, '-' or '_'; values must hold no control character (CR, LF, NUL,
// tab ... and DEL) and every line must fit in MaxActionLine. Anything else
// is refused with an *UnsafeError and dst is returned unchanged.
func AppendAction(dst []byte, a Action, id string) ([]byte, error) {
	if !safeToken(a.Name) {
		return dst, &UnsafeError{Action: a.Name, Reason: "not 1 to 64 letters, digits, - or _"}
	}
	if err := checkValue(a.Name, "ActionID", id); err != nil {
		return dst, err
	}
	for _, h := range a.Headers {
		if !safeToken(h.Key) {
			return dst, &UnsafeError{Action: a.Name, Key: h.Key, Reason: "key is not 1 to 64 letters, digits, - or _"}
		}
		if err := checkValue(a.Name, h.Key, h.Value); err != nil {
			return dst, err
		}
	}
	dst = appendLine(dst, "Action", a.Name)
	dst = appendLine(dst, "ActionID", id)
	for _, h := range a.Headers {
		dst = appendLine(dst, h.Key, h.Value)
	}
	return append(dst, '\r', '\n'), nil
}

func checkValue(action, key, v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return &UnsafeError{Action: action, Key: key, Reason: "value holds a control character (CR, LF, NUL ...)"}
		}
	}
	if len(key)+2+len(v)+2 > MaxActionLine {
		return &UnsafeError{Action: action, Key: key, Reason: "line longer than " + strconv.Itoa(MaxActionLine) + " bytes"}
	}
	return nil
}

func appendLine(dst []byte, k, v string) []byte {
	dst = append(dst, k...)
	dst = append(dst, ':', ' ')
	dst = append(dst, v...)
	return append(dst, '\r', '\n')
}

// safeToken reports whether s is 1 to 64 letters, digits, '-' or '_'.
func safeToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Response is a reply to an action, or one item of a list reply: every
// header in the order received, repeated keys kept. Its strings own their
// memory.
type Response struct {
	Headers []Header
}

// Response copies m into a Response: one allocation for the text and one for
// the header list. The synthetic Output lines of a `Response: Follows`
// message keep the key "Output".
func (m *Message) Response() Response {
	s := string(m.buf)
	hs := make([]Header, len(m.hdrs))
	for i, h := range m.hdrs {
		k := outputKey
		if h.k0 >= 0 {
			k = s[h.k0:h.k1]
		}
		hs[i] = Header{Key: k, Value: s[h.v0:h.v1]}
	}
	return Response{Headers: hs}
}

// Get returns the value of the first header named key (ASCII case ignored),
// or "".
func (r Response) Get(key string) string {
	for _, h := range r.Headers {
		if equalFoldString(h.Key, key) {
			return h.Value
		}
	}
	return ""
}

// Values returns the values of every header named key (ASCII case ignored),
// in order.
func (r Response) Values(key string) []string {
	var vs []string
	for _, h := range r.Headers {
		if equalFoldString(h.Key, key) {
			vs = append(vs, h.Value)
		}
	}
	return vs
}

// OK reports whether Asterisk answered Success (or Follows, the Command
// answer of Asterisk 13 and older, or Goodbye, the answer to Logoff).
func (r Response) OK() bool {
	v := r.Get("Response")
	return equalFoldString(v, "Success") || equalFoldString(v, "Follows") || equalFoldString(v, "Goodbye")
}

// Message returns the reply's Message header: Asterisk's reason on an error.
func (r Response) Message() string { return r.Get("Message") }

// ActionError is an action Asterisk answered with `Response: Error`.
type ActionError struct {
	Action  string
	Message string // Asterisk's Message, e.g. "No such channel"
}

func (e *ActionError) Error() string {
	return "ami: " + e.Action + " failed: " + e.Message
}
