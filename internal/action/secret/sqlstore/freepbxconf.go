package sqlstore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/astguard/astguard/internal/config"
)

// FreePBXConf is what FreePBX's /etc/freepbx.conf says of its database:
// the $amp_conf['AMPDB...'] values.
type FreePBXConf struct {
	User, Host, Port, Name, Socket, Engine string
	Password                               config.Secret
}

// maxFreePBXConf bounds what is read of the file (a real one is a few
// hundred bytes).
const maxFreePBXConf = 64 << 10

// ReadFreePBXConf reads and parses path.
func ReadFreePBXConf(path string) (FreePBXConf, error) {
	f, err := os.Open(path)
	if err != nil {
		return FreePBXConf{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFreePBXConf+1))
	if err != nil {
		return FreePBXConf{}, err
	}
	if len(b) > maxFreePBXConf {
		return FreePBXConf{}, fmt.Errorf("%s is larger than %d bytes: not FreePBX's settings file", path, maxFreePBXConf)
	}
	c, err := ParseFreePBXConf(b)
	if err != nil {
		return FreePBXConf{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// freePBXKeys are the $amp_conf keys read, and where each goes.
var freePBXKeys = map[string]func(*FreePBXConf, string){
	"AMPDBUSER":   func(c *FreePBXConf, v string) { c.User = v },
	"AMPDBPASS":   func(c *FreePBXConf, v string) { c.Password = config.Secret(v) },
	"AMPDBHOST":   func(c *FreePBXConf, v string) { c.Host = v },
	"AMPDBPORT":   func(c *FreePBXConf, v string) { c.Port = v },
	"AMPDBNAME":   func(c *FreePBXConf, v string) { c.Name = v },
	"AMPDBSOCK":   func(c *FreePBXConf, v string) { c.Socket = v },
	"AMPDBENGINE": func(c *FreePBXConf, v string) { c.Engine = v },
}

// ParseFreePBXConf reads the statements `$amp_conf['KEY'] = 'value';` of
// a PHP file for the keys of the database, without running PHP: a value
// must be one string or number literal (single- or double-quoted; a
// double-quoted string that interpolates a variable is not one). A later
// assignment wins, as in PHP. Anything else in the file (require_once,
// comments, other variables) is passed over. A wanted key whose value is
// not a literal is an error naming the key, never its value.
func ParseFreePBXConf(data []byte) (FreePBXConf, error) {
	var c FreePBXConf
	toks, err := phpTokens(string(data))
	if err != nil {
		return c, err
	}
	var stmt []phpToken
	for _, t := range toks {
		switch {
		case t.kind == tokPunct && (t.text == ";" || t.text == "{" || t.text == "}"):
			if err := c.statement(stmt); err != nil {
				return FreePBXConf{}, err
			}
			stmt = stmt[:0]
		default:
			stmt = append(stmt, t)
		}
	}
	if err := c.statement(stmt); err != nil {
		return FreePBXConf{}, err
	}
	if c.User == "" {
		return FreePBXConf{}, errors.New("no $amp_conf['AMPDBUSER']: not FreePBX's settings file?")
	}
	return c, nil
}

// statement takes an assignment to $amp_conf['KEY'] of a wanted key.
func (c *FreePBXConf) statement(s []phpToken) error {
	if len(s) < 5 || s[0].kind != tokVar || s[0].text != "amp_conf" || s[1].text != "[" ||
		s[2].kind != tokString || s[3].text != "]" || s[4].text != "=" {
		return nil
	}
	set, wanted := freePBXKeys[s[2].text]
	if !wanted {
		return nil
	}
	v := s[5:]
	if len(v) != 1 || v[0].kind != tokString && v[0].kind != tokNumber {
		return fmt.Errorf("$amp_conf['%s'] is not a plain string (the guard does not run PHP): give the database in secrets.freepbx.dsn and password_file", s[2].text)
	}
	set(c, v[0].text)
	return nil
}

// DSN is the database of the file: a unix socket when AMPDBSOCK is set
// or the host is localhost (as MySQL's client takes it), AMPDBSOCK or
// else the first of sockets that exists; host and port otherwise.
func (c FreePBXConf) DSN(sockets []string) (config.DSN, error) {
	if c.Engine != "" && !strings.EqualFold(c.Engine, "mysql") {
		return config.DSN{}, fmt.Errorf("AMPDBENGINE is %q: the guard speaks MySQL/MariaDB only", c.Engine)
	}
	d := config.DSN{Driver: config.DriverMySQL, User: c.User, Host: c.Host, Port: 3306, Name: c.Name}
	if d.Name == "" {
		d.Name = "asterisk"
	}
	if c.Port != "" {
		p, err := strconv.Atoi(c.Port)
		if err != nil || p < 1 || p > 65535 {
			return config.DSN{}, fmt.Errorf("AMPDBPORT %q is not a port", c.Port)
		}
		d.Port = p
	}
	switch {
	case c.Socket != "":
		d.Socket = c.Socket
	case c.Host == "" || c.Host == "localhost":
		for _, s := range sockets {
			if fi, err := os.Stat(s); err == nil && fi.Mode()&os.ModeSocket != 0 {
				d.Socket = s
				break
			}
		}
		if d.Socket == "" {
			return config.DSN{}, fmt.Errorf("AMPDBHOST is localhost, which MySQL reaches by its unix socket, and none of %s is one: set AMPDBSOCK, or secrets.freepbx.dsn",
				strings.Join(sockets, ", "))
		}
	}
	return d, nil
}

// MySQLSockets are where MariaDB and MySQL put their unix socket: Debian's
// (FreePBX 17) and the RHEL family's (FreePBX 16 and before on Sangoma
// Linux).
var MySQLSockets = []string{"/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/var/lib/mysql/mysql.sock"}

// The kinds of PHP tokens the parser tells apart.
const (
	tokVar    = iota // $name (text: name)
	tokString        // a string literal without interpolation (text: its value)
	tokNumber        // an integer or decimal literal
	tokWord          // a name, a keyword, a string that interpolates
	tokPunct         // any other character
)

type phpToken struct {
	kind int
	text string
}

// phpTokens splits the PHP code of src (what is between <?php and ?>)
// into tokens, dropping comments and white space.
func phpTokens(src string) ([]phpToken, error) {
	var out []phpToken
	in := false // inside <?php ... ?>
	for i := 0; i < len(src); {
		if !in {
			j := strings.Index(src[i:], "<?")
			if j < 0 {
				break
			}
			i += j + 2
			if strings.HasPrefix(src[i:], "php") {
				i += 3
			}
			in = true
			continue
		}
		c := src[i]
		switch {
		case strings.HasPrefix(src[i:], "?>"):
			in = false
			i += 2
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == '#' || strings.HasPrefix(src[i:], "//"):
			// A line comment ends at the line's end or at ?>.
			for i < len(src) && src[i] != '\n' && !strings.HasPrefix(src[i:], "?>") {
				i++
			}
		case strings.HasPrefix(src[i:], "/*"):
			j := strings.Index(src[i+2:], "*/")
			if j < 0 {
				return nil, errors.New("a /* comment is not closed")
			}
			i += 2 + j + 2
		case c == '\'':
			s, n, err := singleQuoted(src[i:])
			if err != nil {
				return nil, err
			}
			out = append(out, phpToken{tokString, s})
			i += n
		case c == '"':
			s, plain, n, err := doubleQuoted(src[i:])
			if err != nil {
				return nil, err
			}
			kind := tokString
			if !plain {
				kind = tokWord
			}
			out = append(out, phpToken{kind, s})
			i += n
		case c == '$':
			j := i + 1
			for j < len(src) && isNameByte(src[j]) {
				j++
			}
			out = append(out, phpToken{tokVar, src[i+1 : j]})
			i = j
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && (src[j] >= '0' && src[j] <= '9' || src[j] == '.') {
				j++
			}
			out = append(out, phpToken{tokNumber, src[i:j]})
			i = j
		case isNameByte(c):
			j := i
			for j < len(src) && isNameByte(src[j]) {
				j++
			}
			out = append(out, phpToken{tokWord, src[i:j]})
			i = j
		default:
			out = append(out, phpToken{tokPunct, string(c)})
			i++
		}
	}
	return out, nil
}

func isNameByte(b byte) bool {
	return b == '_' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b >= 0x80
}

// singleQuoted reads a '...' literal at the start of s: only \' and \\
// are escapes. It returns the value and the length read.
func singleQuoted(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'':
			return b.String(), i + 1, nil
		case c == '\\' && i+1 < len(s) && (s[i+1] == '\'' || s[i+1] == '\\'):
			b.WriteByte(s[i+1])
			i++
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("a '...' string is not closed")
}

// doubleQuoted reads a "..." literal at the start of s, with PHP's
// escapes. plain is false when the string interpolates a variable ($name
// or {$...}): its value then depends on running PHP.
func doubleQuoted(s string) (value string, plain bool, n int, err error) {
	var b strings.Builder
	plain = true
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return b.String(), plain, i + 1, nil
		case c == '$' && i+1 < len(s) && (isNameByte(s[i+1]) && !(s[i+1] >= '0' && s[i+1] <= '9') || s[i+1] == '{'):
			plain = false
			b.WriteByte(c)
		case c == '{' && i+1 < len(s) && s[i+1] == '$':
			plain = false
			b.WriteByte(c)
		case c == '\\' && i+1 < len(s):
			i++
			switch e := s[i]; e {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'v':
				b.WriteByte('\v')
			case 'e':
				b.WriteByte(0x1b)
			case 'f':
				b.WriteByte('\f')
			case '\\', '$', '"':
				b.WriteByte(e)
			case 'x':
				j := i + 1
				for j < len(s) && j < i+3 && isHex(s[j]) {
					j++
				}
				if j == i+1 {
					b.WriteString(`\x`)
					continue
				}
				v, _ := strconv.ParseUint(s[i+1:j], 16, 8)
				b.WriteByte(byte(v))
				i = j - 1
			case '0', '1', '2', '3', '4', '5', '6', '7':
				j := i
				for j < len(s) && j < i+3 && s[j] >= '0' && s[j] <= '7' {
					j++
				}
				v, _ := strconv.ParseUint(s[i:j], 8, 16)
				b.WriteByte(byte(v))
				i = j - 1
			case 'u':
				// \u{...} is rare in a settings file: leave it to PHP.
				plain = false
				b.WriteString(`\u`)
			default:
				b.WriteByte('\\')
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", false, 0, errors.New(`a "..." string is not closed`)
}

func isHex(b byte) bool { return b >= '0' && b <= '9' || b >= 'a' && b <= 'f' || b >= 'A' && b <= 'F' }
