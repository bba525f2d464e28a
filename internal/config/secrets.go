package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Secrets is the [secrets] table: where the PBX keeps the SIP secrets
// that rotate_secret changes, and how the guard reaches them.
type Secrets struct {
	// Store is StoreAuto, StoreFiles, StoreFreePBX or StoreRealtime.
	Store    string          `toml:"store"`
	FreePBX  FreePBXSecrets  `toml:"freepbx"`
	Realtime RealtimeSecrets `toml:"realtime"`
}

// The values of Secrets.Store.
const (
	// StoreAuto: FreePBX when Secrets.FreePBX.Conf exists; otherwise the
	// config files for an extension that has its section there, and the
	// realtime tables (when a DSN is set) for one that has not.
	StoreAuto = "auto"
	// StoreFiles: sip.conf and pjsip.conf through GetConfig and
	// UpdateConfig.
	StoreFiles = "files"
	// StoreFreePBX: FreePBX's database (the sip table), then FreePBX's
	// reload, which writes Asterisk's files from it.
	StoreFreePBX = "freepbx"
	// StoreRealtime: Asterisk realtime's tables (ps_auths, sippeers).
	StoreRealtime = "realtime"
)

// stores are the valid values of secrets.store, in the order error texts
// list them.
var stores = []string{StoreAuto, StoreFiles, StoreFreePBX, StoreRealtime}

// FreePBXSecrets is [secrets.freepbx].
type FreePBXSecrets struct {
	// Conf is FreePBX's own settings file, /etc/freepbx.conf: its
	// presence marks a FreePBX box, and its $amp_conf['AMPDB...'] values
	// say how to reach the database unless DSN is set.
	Conf string `toml:"conf"`
	// DSN, when set, is the database to use instead of Conf's (a
	// dedicated user): "mysql://USER@HOST:PORT/asterisk" or
	// "mysql://USER@localhost/asterisk?socket=/run/mysqld/mysqld.sock".
	// It never holds the password: see PasswordFile.
	DSN string `toml:"dsn"`
	// PasswordFile holds DSN's password on its first line; the
	// environment variable FreePBXPasswordEnv overrides it.
	PasswordFile string `toml:"password_file"`
	// ReloadCommand is FreePBX's reload (Apply Config): it writes
	// Asterisk's files from the database and reloads Asterisk. It is run
	// as is, without a shell.
	ReloadCommand []string `toml:"reload_command"`
	// ReloadTimeout bounds ReloadCommand.
	ReloadTimeout Duration `toml:"reload_timeout"`
}

// RealtimeSecrets is [secrets.realtime].
type RealtimeSecrets struct {
	// DSN is the realtime database, as the guard reaches it itself:
	// "mysql://USER@HOST:PORT/DB", "mysql://USER@localhost/DB?socket=PATH",
	// "postgres://USER@HOST:PORT/DB?sslmode=disable" or
	// "postgres://USER@/DB?host=/run/postgresql". No password in it.
	DSN string `toml:"dsn"`
	// PasswordFile holds DSN's password on its first line; the
	// environment variable RealtimePasswordEnv overrides it.
	PasswordFile string `toml:"password_file"`
	// PSAuths and SIPPeers are the tables of PJSIP auths and chan_sip
	// peers (extconfig.conf / sorcery.conf name them).
	PSAuths  string `toml:"ps_auths"`
	SIPPeers string `toml:"sippeers"`
	// AuthCache is the name of the sorcery memory cache in front of the
	// PJSIP auths (sorcery.conf: auth/cache = memory_cache,name=...); ""
	// when there is none.
	AuthCache string `toml:"auth_cache"`
}

// The environment variables that, set and not empty, give the database
// passwords (they override password_file).
const (
	FreePBXPasswordEnv  = "ASTGUARD_FREEPBX_DB_PASSWORD"
	RealtimePasswordEnv = "ASTGUARD_REALTIME_DB_PASSWORD"
)

// defaultSecrets are the [secrets] values of the example file.
func defaultSecrets() Secrets {
	return Secrets{
		Store: StoreAuto,
		FreePBX: FreePBXSecrets{
			Conf:          "/etc/freepbx.conf",
			ReloadCommand: []string{"fwconsole", "reload"},
			ReloadTimeout: Duration(120 * time.Second),
		},
		Realtime: RealtimeSecrets{PSAuths: "ps_auths", SIPPeers: "sippeers"},
	}
}

// validate checks the [secrets] table.
func (s *Secrets) validate(p *problems) {
	if !slices.Contains(stores, s.Store) {
		p.add("secrets.store: %q is not one of %s", s.Store, strings.Join(stores, ", "))
	}
	f := &s.FreePBX
	switch {
	case f.Conf == "":
		p.add("secrets.freepbx.conf must not be empty")
	case !filepath.IsAbs(f.Conf):
		p.add("secrets.freepbx.conf: %q must be an absolute path", f.Conf)
	}
	if f.DSN != "" {
		if d, err := ParseDSN(f.DSN); err != nil {
			p.add("secrets.freepbx.dsn: %v", err)
		} else if d.Driver != DriverMySQL {
			p.add("secrets.freepbx.dsn: FreePBX's database is MySQL or MariaDB: use mysql://")
		}
	}
	p.passwordFile("secrets.freepbx", f.PasswordFile, f.DSN)
	switch {
	case len(f.ReloadCommand) == 0 || f.ReloadCommand[0] == "":
		p.add("secrets.freepbx.reload_command must name a command")
	case slices.ContainsFunc(f.ReloadCommand, func(a string) bool { return strings.ContainsRune(a, 0) }):
		p.add("secrets.freepbx.reload_command must not contain NUL")
	}
	p.positive("secrets.freepbx.reload_timeout", f.ReloadTimeout)

	r := &s.Realtime
	if r.DSN != "" {
		if _, err := ParseDSN(r.DSN); err != nil {
			p.add("secrets.realtime.dsn: %v", err)
		}
	} else if s.Store == StoreRealtime {
		p.add(`secrets.realtime.dsn must be set when secrets.store is "realtime"`)
	}
	p.passwordFile("secrets.realtime", r.PasswordFile, r.DSN)
	for _, t := range []struct{ key, name string }{{"secrets.realtime.ps_auths", r.PSAuths}, {"secrets.realtime.sippeers", r.SIPPeers}} {
		if !validIdentifier(t.name) {
			p.add("%s: %q must be a table name: 1 to 63 letters, digits or _, not starting with a digit", t.key, t.name)
		}
	}
	if r.AuthCache != "" && !validCacheName(r.AuthCache) {
		p.add("secrets.realtime.auth_cache: %q must be 1 to 64 letters, digits or - _ .", r.AuthCache)
	}
}

// passwordFile checks the password_file of table (its dsn beside it).
func (p *problems) passwordFile(table, path, dsn string) {
	switch {
	case path == "":
	case !filepath.IsAbs(path):
		p.add("%s.password_file: %q must be an absolute path", table, path)
	case dsn == "":
		p.add("%s.password_file is set but %s.dsn is empty", table, table)
	}
}

// validIdentifier reports whether s is a table name the guard writes into
// SQL text: ASCII letters, digits and _, not starting with a digit, at
// most 63 bytes (PostgreSQL's limit; MySQL's is 64).
func validIdentifier(s string) bool {
	if s == "" || len(s) > 63 || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := range len(s) {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '_':
		default:
			return false
		}
	}
	return true
}

// validCacheName reports whether s can name a sorcery memory cache in an
// AMI header.
func validCacheName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := range len(s) {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '_', b == '-', b == '.':
		default:
			return false
		}
	}
	return true
}

// The drivers of a DSN.
const (
	DriverMySQL    = "mysql"    // MySQL or MariaDB
	DriverPostgres = "postgres" // PostgreSQL
)

// DSN is a database the guard connects to: a URL without password.
type DSN struct {
	Driver string // DriverMySQL or DriverPostgres
	User   string
	// Host and Port, or Socket: the path of a unix socket (MySQL's
	// ?socket=, PostgreSQL's ?host=/dir).
	Host   string
	Port   int
	Socket string
	Name   string // the database
	// URL is the DSN as given (PostgreSQL takes its parameters from it).
	URL string
}

// String describes the DSN without any secret: "mysql astguard@127.0.0.1:3306/asterisk".
func (d DSN) String() string {
	where := net.JoinHostPort(d.Host, strconv.Itoa(d.Port))
	if d.Socket != "" {
		where = "unix(" + d.Socket + ")"
	}
	return d.Driver + " " + d.User + "@" + where + "/" + d.Name
}

// mysqlParams and postgresParams are the URL parameters the guard
// accepts for each driver.
var (
	mysqlParams    = []string{"socket"}
	postgresParams = []string{"host", "sslmode", "sslrootcert", "connect_timeout", "application_name"}
)

// ParseDSN reads "mysql://USER@HOST[:PORT]/DB[?socket=PATH]" or
// "postgres://USER@[HOST[:PORT]]/DB[?host=/socket/dir&sslmode=...]"
// ("postgresql://" too). A password in it is refused: it would sit in
// the configuration, in every copy and backup of it.
func ParseDSN(s string) (DSN, error) {
	u, err := url.Parse(s)
	if err != nil {
		return DSN{}, errors.New("not a URL (mysql://USER@HOST:PORT/DB or postgres://USER@HOST:PORT/DB)")
	}
	d := DSN{URL: s}
	allowed := mysqlParams
	switch u.Scheme {
	case "mysql":
		d.Driver, d.Port = DriverMySQL, 3306
	case "postgres", "postgresql":
		d.Driver, d.Port, allowed = DriverPostgres, 5432, postgresParams
	default:
		return DSN{}, fmt.Errorf("%q is not a database the guard speaks: mysql:// or postgres://", u.Scheme+"://")
	}
	if u.User == nil || u.User.Username() == "" {
		return DSN{}, errors.New("names no user: " + u.Scheme + "://USER@...")
	}
	if _, has := u.User.Password(); has {
		return DSN{}, errors.New("must not hold a password: put it in password_file or the environment")
	}
	d.User = u.User.Username()
	d.Name = strings.TrimPrefix(u.Path, "/")
	if d.Name == "" || strings.Contains(d.Name, "/") {
		return DSN{}, errors.New("names no database: .../DB")
	}
	if u.Fragment != "" || u.Opaque != "" {
		return DSN{}, errors.New("not a URL (mysql://USER@HOST:PORT/DB or postgres://USER@HOST:PORT/DB)")
	}
	q := u.Query()
	for k := range q {
		if !slices.Contains(allowed, k) {
			return DSN{}, fmt.Errorf("parameter %q is not one of %s", k, strings.Join(allowed, ", "))
		}
	}
	d.Host = u.Hostname()
	if p := u.Port(); p != "" {
		if !validPort(p) {
			return DSN{}, fmt.Errorf("port %q must be a number from 1 to 65535", p)
		}
		d.Port, _ = strconv.Atoi(p)
	}
	switch d.Driver {
	case DriverMySQL:
		d.Socket = q.Get("socket")
		if d.Socket == "" && d.Host == "" {
			return DSN{}, errors.New("names no host: mysql://USER@HOST/DB, or ?socket=PATH for a unix socket")
		}
	case DriverPostgres:
		if h := q.Get("host"); strings.HasPrefix(h, "/") {
			d.Socket = filepath.Join(h, ".s.PGSQL."+strconv.Itoa(d.Port))
		} else if h != "" {
			d.Host = h
		}
		if d.Socket == "" && d.Host == "" {
			return DSN{}, errors.New("names no host: postgres://USER@HOST/DB, or ?host=/run/postgresql for a unix socket")
		}
	}
	if d.Socket != "" && !filepath.IsAbs(d.Socket) {
		return DSN{}, fmt.Errorf("socket %q must be an absolute path", d.Socket)
	}
	return d, nil
}

// DBPasswordFiles returns the password files of [secrets] the guard would
// read: those set and not overridden by their environment variable.
// `guard run` checks their owner and mode as the AMI secret file's.
func (c *Config) DBPasswordFiles() []string {
	var out []string
	for _, f := range []struct{ env, file string }{
		{FreePBXPasswordEnv, c.Secrets.FreePBX.PasswordFile},
		{RealtimePasswordEnv, c.Secrets.Realtime.PasswordFile},
	} {
		if f.file != "" && os.Getenv(f.env) == "" {
			out = append(out, f.file)
		}
	}
	return out
}

// DBPassword returns the password of a database: the environment
// variable env when set and not empty, else the first line of file ("":
// none). The file is read as ami.secret_file is: never through a symlink.
func DBPassword(env, file string) (Secret, error) {
	if v := os.Getenv(env); v != "" {
		if strings.ContainsAny(v, "\r\n") {
			return "", errors.New(env + " must not contain CR or LF")
		}
		return Secret(v), nil
	}
	if file == "" {
		return "", nil
	}
	s, err := readFirstLine(file)
	if err != nil {
		return "", err
	}
	if strings.ContainsRune(s, '\r') {
		return "", errors.New(file + ": the password must not contain CR or LF")
	}
	return Secret(s), nil
}
