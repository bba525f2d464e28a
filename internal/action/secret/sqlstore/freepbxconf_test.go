package sqlstore

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/config"
)

// realConf is /etc/freepbx.conf as FreePBX's installer writes it
// (framework installlib/installcommand.class.php).
const realConf = `<?php
$amp_conf['AMPDBUSER'] = 'freepbxuser';
$amp_conf['AMPDBPASS'] = 'r9J\'x"2\\;$k';
$amp_conf['AMPDBHOST'] = 'localhost';
$amp_conf['AMPDBPORT'] = '3306';
$amp_conf['AMPDBNAME'] = 'asterisk';
$amp_conf['AMPDBENGINE'] = 'mysql';
$amp_conf['datasource'] = ''; //for sqlite3

require_once('/var/www/html/admin/bootstrap.php');
?>
`

func TestParseFreePBXConf(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want FreePBXConf
	}{
		{"as installed", realConf, FreePBXConf{User: "freepbxuser", Password: `r9J'x"2\;$k`, Host: "localhost", Port: "3306", Name: "asterisk", Engine: "mysql"}},
		{"double quotes and escapes", `<?php $amp_conf["AMPDBUSER"] = "fp"; $amp_conf["AMPDBPASS"] = "a\"b\\c\$d\x41\101\t";`,
			FreePBXConf{User: "fp", Password: "a\"b\\c$dAA\t"}},
		{"comments are not code", `<?php
# $amp_conf['AMPDBUSER'] = 'hash';
// $amp_conf['AMPDBUSER'] = 'slashes';
/* $amp_conf['AMPDBUSER'] = 'block';
*/ $amp_conf['AMPDBUSER'] = 'real'; // $amp_conf['AMPDBPASS'] = 'no';
$amp_conf['AMPDBSOCK'] = '/var/lib/mysql/mysql.sock';`, FreePBXConf{User: "real", Socket: "/var/lib/mysql/mysql.sock"}},
		{"the later assignment wins, spaces anywhere", "<?php\n$amp_conf [ 'AMPDBUSER' ]='a';\n$amp_conf['AMPDBUSER']\n=\n'b'\n;", FreePBXConf{User: "b"}},
		{"other keys may be anything", `<?php $amp_conf['AMPDBUSER'] = 'u'; $amp_conf['ASTETCDIR'] = getenv('X') . '/asterisk'; $other['AMPDBPASS'] = 'no';`,
			FreePBXConf{User: "u"}},
		{"text outside PHP", "$amp_conf['AMPDBUSER'] = 'outside';\n<?php $amp_conf['AMPDBUSER'] = 'inside'; ?>\n$amp_conf['AMPDBPASS'] = 'after';", FreePBXConf{User: "inside"}},
		{"a number", `<?php $amp_conf['AMPDBUSER'] = 'u'; $amp_conf['AMPDBPORT'] = 3307;`, FreePBXConf{User: "u", Port: "3307"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFreePBXConf([]byte(tc.src))
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v\nwant %+v", got, err, tc.want)
			}
		})
	}
}

// What only running PHP could tell is refused, naming the key, never the
// value.
func TestParseFreePBXConfRefuses(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`<?php $amp_conf['AMPDBUSER'] = 'u'; $amp_conf['AMPDBPASS'] = getenv('DBPASS');`, "$amp_conf['AMPDBPASS'] is not a plain string (the guard does not run PHP)"},
		{`<?php $amp_conf['AMPDBUSER'] = 'u'; $amp_conf['AMPDBPASS'] = "Secret$suffix";`, "$amp_conf['AMPDBPASS'] is not a plain string"},
		{`<?php $amp_conf['AMPDBUSER'] = 'u'; $amp_conf['AMPDBPASS'] = 'Secret' . 'More';`, "$amp_conf['AMPDBPASS'] is not a plain string"},
		{`<?php $amp_conf['AMPDBUSER'] = 'u'; $amp_conf['AMPDBPASS'] = 'SecretNotClosed;`, "a '...' string is not closed"},
		{`<?php $amp_conf['AMPDBPASS'] = 'Secret';`, "no $amp_conf['AMPDBUSER']: not FreePBX's settings file?"},
		{"<?php /* $amp_conf['AMPDBPASS'] = 'Secret';", "a /* comment is not closed"},
	} {
		_, err := ParseFreePBXConf([]byte(tc.src))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.src, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "Secret") {
			t.Errorf("the error shows the value: %v", err)
		}
	}
}

func TestFreePBXConfDSN(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "mysqld.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	plain := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.sock")
	for _, tc := range []struct {
		name    string
		conf    FreePBXConf
		sockets []string
		want    string // DSN.String(), or the error
	}{
		{"localhost is the socket that exists", FreePBXConf{User: "fp", Host: "localhost", Name: "asterisk"}, []string{missing, plain, sock}, "mysql fp@unix(" + sock + ")/asterisk"},
		{"no host is localhost", FreePBXConf{User: "fp"}, []string{sock}, "mysql fp@unix(" + sock + ")/asterisk"},
		{"AMPDBSOCK wins", FreePBXConf{User: "fp", Host: "10.0.0.5", Socket: "/srv/my.sock", Name: "pbx"}, []string{sock}, "mysql fp@unix(/srv/my.sock)/pbx"},
		{"a host is TCP", FreePBXConf{User: "fp", Host: "10.0.0.5", Port: "3307", Name: "asterisk", Engine: "mysql"}, nil, "mysql fp@10.0.0.5:3307/asterisk"},
		{"no socket", FreePBXConf{User: "fp", Host: "localhost"}, []string{missing, plain},
			"AMPDBHOST is localhost, which MySQL reaches by its unix socket, and none of " + missing + ", " + plain + " is one: set AMPDBSOCK, or secrets.freepbx.dsn"},
		{"sqlite", FreePBXConf{User: "fp", Engine: "sqlite3"}, []string{sock}, `AMPDBENGINE is "sqlite3": the guard speaks MySQL/MariaDB only`},
		{"bad port", FreePBXConf{User: "fp", Host: "db", Port: "x"}, nil, `AMPDBPORT "x" is not a port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := tc.conf.DSN(tc.sockets)
			got := d.String()
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// The parser never panics, and a value written as FreePBX writes it
// (single quotes, ' and \ escaped) reads back as itself.
func FuzzParseFreePBXConf(f *testing.F) {
	f.Add(realConf, `p@ss'w\rd`)
	f.Add(`<?php $amp_conf["AMPDBPASS"] = "a\"b\\c\$d\x41\101\u{41}";`, "")
	f.Add("<?php /* */ # x\n// y\n?> <? $amp_conf[ 'AMPDBUSER' ] = 1.5 ;", "\x00\n")
	f.Fuzz(func(t *testing.T, src, value string) {
		_, _ = ParseFreePBXConf([]byte(src))
		quoted := "'" + strings.ReplaceAll(strings.ReplaceAll(value, `\`, `\\`), `'`, `\'`) + "'"
		c, err := ParseFreePBXConf([]byte("<?php\n$amp_conf['AMPDBUSER'] = 'u';\n$amp_conf['AMPDBPASS'] = " + quoted + ";\n?>\n"))
		if err != nil || c.Password != config.Secret(value) {
			t.Fatalf("%q: got a different value back (%v)", value, err)
		}
	})
}
