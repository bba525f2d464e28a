package ami

import "strings"

// Tech is the channel technology (driver) of a channel name.
type Tech uint8

// The technologies the guard knows.
const (
	TechUnknown Tech = iota
	TechSIP          // chan_sip
	TechPJSIP        // chan_pjsip
	TechIAX2         // chan_iax2
	TechLocal        // Local channels (core)
)

var techNames = [...]string{"Unknown", "SIP", "PJSIP", "IAX2", "Local"}

// String returns the technology as Asterisk spells it: SIP, PJSIP, IAX2,
// Local (or Unknown).
func (t Tech) String() string {
	if int(t) < len(techNames) {
		return techNames[t]
	}
	return "Tech(?)"
}

// ParseTech parses a technology name (SIP, PJSIP, IAX2, Local), ignoring
// ASCII case, as found in a security event's Service header or the config.
func ParseTech(s string) (Tech, bool) {
	for t := TechSIP; int(t) < len(techNames); t++ {
		if equalFoldString(s, techNames[t]) {
			return t, true
		}
	}
	return TechUnknown, false
}

// Extension names an extension (a chan_sip peer, a PJSIP endpoint, an IAX2
// user) by its technology and name: the key the detector counts by and the
// actions act on. Comparable, so it serves as a map key.
type Extension struct {
	Tech Tech
	Name string
}

// String returns the extension as Asterisk writes a peer: "SIP/200".
func (e Extension) String() string { return e.Tech.String() + "/" + e.Name }

// ChannelName is a channel name taken apart.
type ChannelName struct {
	Tech    Tech
	Name    string // the peer, endpoint or user; for Local the extension
	Context string // Local only: the dialplan context
	Half    uint8  // Local only: 1 or 2 (the ;1 or ;2 half); else 0
}

// ParseChannel takes apart a channel name as Asterisk prints it:
//
//	SIP/<peer>-%08x          ^SIP/(.+)-[0-9a-f]{8}$
//	PJSIP/<endpoint>-%08x    ^PJSIP/(.+)-[0-9a-f]{8}$
//	IAX2/<user>-<decimal>    ^IAX2/(.+)-[0-9]+$
//	Local/<exten>@<ctx>-%08x;1 (or ;2)
//
// The technology prefix is case-sensitive and the hex suffix must be lower
// case (Asterisk prints %08x); the name may contain dashes
// (`SIP/office-200-0000001a` is peer `office-200`). For Local the context
// starts after the last `@`. Name and Context are substrings of s (no
// allocation). Names and contexts must be non-empty and must not contain
// spaces, control characters (CR and LF included) or DEL; other bytes,
// non-ASCII ones included, are accepted here because a chan_sip guest can
// choose its name and the call must still be attributed: use [ValidName]
// before putting a name into an action. Anything else returns false.
func ParseChannel(s string) (ChannelName, bool) {
	var c ChannelName
	switch {
	case strings.HasPrefix(s, "SIP/"):
		c.Tech, s = TechSIP, s[len("SIP/"):]
	case strings.HasPrefix(s, "PJSIP/"):
		c.Tech, s = TechPJSIP, s[len("PJSIP/"):]
	case strings.HasPrefix(s, "IAX2/"):
		c.Tech, s = TechIAX2, s[len("IAX2/"):]
	case strings.HasPrefix(s, "Local/"):
		c.Tech, s = TechLocal, s[len("Local/"):]
	default:
		return ChannelName{}, false
	}
	if c.Tech == TechLocal {
		n := len(s)
		if n < 2 || s[n-2] != ';' || (s[n-1] != '1' && s[n-1] != '2') {
			return ChannelName{}, false
		}
		c.Half = s[n-1] - '0'
		s = s[:n-2]
	}
	var ok bool
	if c.Tech == TechIAX2 {
		s, ok = cutDecimalSuffix(s)
	} else {
		s, ok = cutHexSuffix(s)
	}
	if !ok {
		return ChannelName{}, false
	}
	if c.Tech == TechLocal {
		at := strings.LastIndexByte(s, '@')
		if at < 0 {
			return ChannelName{}, false
		}
		s, c.Context = s[:at], s[at+1:]
		if !channelPart(c.Context) {
			return ChannelName{}, false
		}
	}
	if !channelPart(s) {
		return ChannelName{}, false
	}
	c.Name = s
	return c, true
}

// cutHexSuffix removes a `-` and 8 lower-case hex digits from the end of s.
func cutHexSuffix(s string) (string, bool) {
	n := len(s)
	if n < 9 || s[n-9] != '-' {
		return "", false
	}
	for i := n - 8; i < n; i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", false
		}
	}
	return s[:n-9], true
}

// cutDecimalSuffix removes a `-` and one or more decimal digits from the end
// of s.
func cutDecimalSuffix(s string) (string, bool) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	if i == len(s) || i == 0 || s[i-1] != '-' {
		return "", false
	}
	return s[:i-1], true
}

// channelPart reports whether s is a usable name inside a channel name:
// non-empty, without spaces, control characters or DEL.
func channelPart(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// MaxNameLen is the longest name ValidName accepts.
const MaxNameLen = 80

// ValidName reports whether s is safe to use as an extension, peer, endpoint
// or context name in an AMI action, a config category or a regular
// expression: 1 to MaxNameLen bytes, each an ASCII letter or digit or one of
// `- _ . + * # @ ~`.
//
// It is stricter than "printable ASCII without spaces and `/`" on purpose:
// it also rejects the characters with a meaning in Asterisk config files and
// dialplan arguments (`; , | [ ] ( ) { } $ " ' \` and `:` `=` `!` `%` `&` `<`
// `>` `?` `^` and the backquote), so a name that passes cannot inject a
// header (no CR/LF), a config line or a dialplan argument. `.`, `+`, `*` are
// still regular-expression metacharacters: escape names before putting them
// into a regex.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '_', c == '.', c == '+', c == '*', c == '#', c == '@', c == '~':
		default:
			return false
		}
	}
	return true
}

// ValidChannel reports whether s is a channel name the guard may put into an
// action: one ParseChannel understands, with no control characters.
func ValidChannel(s string) bool {
	if _, ok := ParseChannel(s); !ok {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
