package config

import (
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// keyLines returns the line (from 1) where each key of the TOML document
// src is first written: the keys of key/value pairs and of table headers,
// as toml.Key.String() spells them, their parent tables (at the line of
// their first key when no header names them), keys inside inline tables,
// and "key[i]" for the i-th item (from 0) of a key's array. The toml
// package keeps key positions to itself, so this reads the text again; it
// expects a document that toml parsed, and on any other input returns what
// it found without failing.
func keyLines(src string) map[string]int {
	s := &lineScanner{src: src, lines: make(map[string]int)}
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			s.starts = append(s.starts, i+1)
		}
	}
	s.document()
	return s.lines
}

type lineScanner struct {
	src    string
	i      int
	starts []int // offsets where lines 2, 3, ... start
	lines  map[string]int
}

// lineAt returns the line of offset i.
func (s *lineScanner) lineAt(i int) int {
	return sort.SearchInts(s.starts, i+1) + 1
}

// note records the line of key and of its parents, unless known.
func (s *lineScanner) note(key []string, at int) {
	for n := 1; n <= len(key); n++ {
		k := toml.Key(key[:n]).String()
		if _, ok := s.lines[k]; !ok {
			s.lines[k] = s.lineAt(at)
		}
	}
}

func (s *lineScanner) eof() bool { return s.i >= len(s.src) }

func (s *lineScanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.i]
}

// blank skips spaces and tabs, and with newlines also line ends and
// comments.
func (s *lineScanner) blank(newlines bool) {
	for !s.eof() {
		switch s.src[s.i] {
		case ' ', '\t':
			s.i++
		case '\r', '\n':
			if !newlines {
				return
			}
			s.i++
		case '#':
			if !newlines {
				return
			}
			for !s.eof() && s.src[s.i] != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

// document reads table headers and key/value pairs to the end.
func (s *lineScanner) document() {
	var table []string
	for {
		s.blank(true)
		if s.eof() {
			return
		}
		start := s.i
		if s.src[s.i] == '[' {
			s.i++
			if s.peek() == '[' {
				s.i++
			}
			table = s.key()
			s.note(table, start)
			for !s.eof() && s.src[s.i] == ']' {
				s.i++
			}
		} else {
			s.keyValue(table, true)
		}
		if s.i == start { // not TOML: step over what cannot be read
			s.i++
		}
	}
}

// keyValue reads `key = value` below the table prefix; note tells whether
// to record its keys (not inside an array, whose tables are not keys of
// the schema).
func (s *lineScanner) keyValue(prefix []string, note bool) {
	start := s.i
	key := append(append([]string(nil), prefix...), s.key()...)
	if note {
		s.note(key, start)
	}
	s.blank(false)
	if s.peek() == '=' {
		s.i++
	}
	s.blank(false)
	s.value(key, note)
}

// key reads a dotted key: bare, "basic" or 'literal' parts.
func (s *lineScanner) key() []string {
	var parts []string
	for {
		s.blank(false)
		switch s.peek() {
		case '"', '\'':
			start := s.i
			s.str()
			parts = append(parts, unquoteKey(s.src[start:s.i]))
		default:
			start := s.i
			for !s.eof() && isBareKeyByte(s.src[s.i]) {
				s.i++
			}
			if s.i == start {
				return parts
			}
			parts = append(parts, s.src[start:s.i])
		}
		s.blank(false)
		if s.peek() != '.' {
			return parts
		}
		s.i++
	}
}

// value reads a value of key: a string, an array, an inline table or a
// bare value (number, boolean, date).
func (s *lineScanner) value(key []string, note bool) {
	switch s.peek() {
	case '"', '\'':
		s.str()
	case '[':
		s.array(key, note)
	case '{':
		s.inlineTable(key, note)
	default:
		for !s.eof() && !strings.ContainsRune(",]}#\r\n", rune(s.src[s.i])) {
			s.i++
		}
	}
}

// array reads [v, v, ...], noting the line of each item of key.
func (s *lineScanner) array(key []string, note bool) {
	s.i++
	name := toml.Key(key).String()
	for n := 0; ; {
		s.blank(true)
		switch s.peek() {
		case 0:
			return
		case ']':
			s.i++
			return
		case ',':
			s.i++
			continue
		}
		start := s.i
		if note {
			item := name + "[" + strconv.Itoa(n) + "]"
			if _, ok := s.lines[item]; !ok {
				s.lines[item] = s.lineAt(start)
			}
		}
		n++
		s.value(nil, false)
		if s.i == start {
			s.i++
		}
	}
}

// inlineTable reads {k = v, ...}, whose keys are below key.
func (s *lineScanner) inlineTable(key []string, note bool) {
	s.i++
	for {
		s.blank(true)
		switch s.peek() {
		case 0:
			return
		case '}':
			s.i++
			return
		case ',':
			s.i++
			continue
		}
		start := s.i
		s.keyValue(key, note)
		if s.i == start {
			s.i++
		}
	}
}

// str reads a basic, literal or multi-line string, quotes included.
func (s *lineScanner) str() {
	q := s.src[s.i]
	if strings.HasPrefix(s.src[s.i:], strings.Repeat(string(q), 3)) {
		s.i += 3
		for !s.eof() {
			switch {
			case q == '"' && s.src[s.i] == '\\':
				s.i += 2
			case strings.HasPrefix(s.src[s.i:], strings.Repeat(string(q), 3)):
				s.i += 3
				// Up to two more quotes end the content, not the string.
				for n := 0; n < 2 && s.peek() == q; n++ {
					s.i++
				}
				return
			default:
				s.i++
			}
		}
		s.i = min(s.i, len(s.src))
		return
	}
	s.i++
	for !s.eof() {
		switch c := s.src[s.i]; {
		case c == q:
			s.i++
			return
		case c == '\n':
			return
		case q == '"' && c == '\\':
			s.i += 2
		default:
			s.i++
		}
	}
	s.i = min(s.i, len(s.src))
}

// unquoteKey returns a quoted key part's name.
func unquoteKey(q string) string {
	if len(q) < 2 {
		return q
	}
	if q[0] == '\'' {
		return q[1 : len(q)-1]
	}
	if u, err := strconv.Unquote(q); err == nil {
		return u
	}
	return q[1 : len(q)-1]
}

// isBareKeyByte reports whether b can be part of a bare TOML key.
func isBareKeyByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-'
}
