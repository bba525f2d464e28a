// Package testdb starts real database servers for tests: MariaDB
// (Debian's mariadb-server) and PostgreSQL (Debian's postgresql), each on
// loopback, on a free port, in a temporary directory of its own, at most
// once per test binary (the first test that asks starts it; TestMain stops
// it with Stop). A test gets a database of its own on the shared server
// (NewDatabase) and users with exactly the grants it gives them.
//
// A test that needs a server the machine lacks is skipped, or fails under
// ASTGUARD_TEST_STRICT=1 (testenv.Skip).
package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/astguard/astguard/internal/testenv"
)

// The kinds of server.
const (
	MariaDB  = "mariadb"
	Postgres = "postgres"
)

// Server is a database server a test binary started for itself.
type Server struct {
	Kind string
	Host string // 127.0.0.1
	Port int
	// Socket is MariaDB's unix socket, or the directory of PostgreSQL's.
	Socket string
	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
	admin  *sql.DB
}

// lazy starts a server once.
type lazy struct {
	once sync.Once
	srv  *Server
	err  error
}

var (
	maria, pg lazy
	started   sync.Mutex
	all       []*Server
)

// StartMariaDB returns the MariaDB server of this test binary, starting
// it at the first call. It skips t (fails it when strict) when MariaDB
// is not installed.
func StartMariaDB(t testing.TB) *Server {
	t.Helper()
	testenv.RequireCommand(t, "mariadbd", "mariadb-install-db")
	return get(t, &maria, startMariaDB)
}

// StartPostgres returns the PostgreSQL server of this test binary,
// starting it at the first call (as user nobody: PostgreSQL refuses to
// run as root). It skips t (fails it when strict) when PostgreSQL is not
// installed.
func StartPostgres(t testing.TB) *Server {
	t.Helper()
	if postgresBin() == "" {
		testenv.Skip(t, "needs PostgreSQL's initdb and postgres, not found in /usr/lib/postgresql/*/bin nor PATH (Debian: apt-get install postgresql)")
	}
	testenv.RequireRoot(t, "run PostgreSQL as user nobody")
	return get(t, &pg, startPostgres)
}

func get(t testing.TB, l *lazy, start func() (*Server, error)) *Server {
	t.Helper()
	l.once.Do(func() {
		l.srv, l.err = start()
		if l.srv != nil {
			started.Lock()
			all = append(all, l.srv)
			started.Unlock()
		}
	})
	if l.err != nil {
		t.Fatal(l.err)
	}
	return l.srv
}

// Stop stops every server this binary started and removes its directory.
// TestMain calls it after m.Run.
func Stop() {
	started.Lock()
	defer started.Unlock()
	for _, s := range all {
		s.stop()
	}
	all = nil
}

func (s *Server) stop() {
	if s.admin != nil {
		s.admin.Close()
	}
	if s.cmd != nil && s.cmd.Process != nil {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
		}
	}
	os.RemoveAll(s.dir)
}

// freePort returns a TCP port free on 127.0.0.1 now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// run runs a setup command, its output in the error.
func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return nil
}

// serve starts the server process in its own process group.
func (s *Server) serve(cmd *exec.Cmd, logPath string) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(s.exited)
	}()
	return nil
}

// waitUp pings the admin connection until it answers.
func (s *Server) waitUp(logPath string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := s.admin.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("%s exited at its start: %s", s.Kind, log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("%s did not answer within 60 s: %v\n%s", s.Kind, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func startMariaDB() (*Server, error) {
	dir, err := os.MkdirTemp("", "astguard-mariadb-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Kind: MariaDB, Host: "127.0.0.1", Port: port, Socket: filepath.Join(dir, "mysqld.sock"), dir: dir}
	data := filepath.Join(dir, "data")
	if err := run(exec.Command("mariadb-install-db", "--no-defaults", "--datadir="+data, "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logPath := filepath.Join(dir, "server.log")
	cmd := exec.Command("mariadbd", "--no-defaults", "--datadir="+data, "--socket="+s.Socket, "--port="+strconv.Itoa(port),
		"--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve", "--pid-file="+filepath.Join(dir, "mysqld.pid"),
		"--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=2")
	if err := s.serve(cmd, logPath); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c := mysql.NewConfig()
	c.User, c.Net, c.Addr = "root", "unix", s.Socket
	c.MultiStatements = true
	c.Logger = &mysql.NopLogger{}
	conn, err := mysql.NewConnector(c)
	if err != nil {
		s.stop()
		return nil, err
	}
	s.admin = sql.OpenDB(conn)
	if err := s.waitUp(logPath); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// postgresBin returns the directory of initdb and postgres, or "".
func postgresBin() string {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- { // the newest first
		if _, err := os.Stat(filepath.Join(dirs[i], "postgres")); err == nil {
			return dirs[i]
		}
	}
	return ""
}

// nobody is the user PostgreSQL runs as.
const nobody = 65534

func startPostgres() (*Server, error) {
	bin := postgresBin()
	dir, err := os.MkdirTemp("", "astguard-postgres-")
	if err != nil {
		return nil, err
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Kind: Postgres, Host: "127.0.0.1", Port: port, Socket: dir, dir: dir}
	asNobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth-local=trust",
		"--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr, initdb.Dir, initdb.Env = asNobody, dir, []string{"HOME=" + dir, "PATH=/usr/bin:/bin"}
	if err := run(initdb); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logPath := filepath.Join(dir, "server.log")
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "shared_buffers=16MB", "-c", "max_connections=50")
	cmd.SysProcAttr, cmd.Dir, cmd.Env = &syscall.SysProcAttr{Credential: asNobody.Credential}, dir, []string{"HOME=" + dir, "PATH=/usr/bin:/bin"}
	// The log file is created by root and written by the server as
	// nobody through the inherited descriptor.
	if err := s.serve(cmd, logPath); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	pc, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d", dir, port))
	if err != nil {
		s.stop()
		return nil, err
	}
	s.admin = stdlib.OpenDB(*pc)
	if err := s.waitUp(logPath); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// Admin is a superuser's connection to the server (MariaDB's root over
// its socket, PostgreSQL's postgres).
func (s *Server) Admin() *sql.DB { return s.admin }

// randomName returns prefix and 8 random hex digits: a name no other test
// uses.
func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewDatabase creates a database of the test's own (dropped when it ends)
// and runs script in it, as the superuser: statements separated by ";",
// every "`asterisk`" (MariaDB) replaced by the new database's name, so
// that FreePBX's schema, which creates and uses `asterisk`, lands there.
// It returns the database's name.
func (s *Server) NewDatabase(t testing.TB, script string) string {
	t.Helper()
	name := randomName("t_")
	ctx := context.Background()
	conn, err := s.admin.Conn(ctx) // a script's USE stays on this connection
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = s.admin.ExecContext(context.Background(), dropDatabase(s.Kind, name))
	})
	if s.Kind == MariaDB {
		script = strings.ReplaceAll(script, "`asterisk`", "`"+name+"`")
		if _, err := conn.ExecContext(ctx, "USE "+name+";\n"+script); err != nil {
			t.Fatalf("loading the schema into %s: %v", name, err)
		}
		return name
	}
	db, err := s.Connect(name, "postgres", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, script); err != nil {
		t.Fatalf("loading the schema into %s: %v", name, err)
	}
	return name
}

func dropDatabase(kind, name string) string {
	if kind == Postgres {
		return "DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"
	}
	return "DROP DATABASE IF EXISTS " + name
}

// Superuser opens database name as the superuser (over the unix socket),
// closed when t ends: what a test reads and changes behind the guard's back.
func (s *Server) Superuser(t testing.TB, name string) *sql.DB {
	t.Helper()
	var db *sql.DB
	if s.Kind == MariaDB {
		c := mysql.NewConfig()
		c.User, c.Net, c.Addr, c.DBName = "root", "unix", s.Socket, name
		c.Logger = &mysql.NopLogger{}
		conn, err := mysql.NewConnector(c)
		if err != nil {
			t.Fatal(err)
		}
		db = sql.OpenDB(conn)
	} else {
		var err error
		if db, err = s.Connect(name, "postgres", ""); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Connect opens database name as user (over TCP with password; the
// superuser of PostgreSQL over its socket when password is "").
func (s *Server) Connect(name, user, password string) (*sql.DB, error) {
	if s.Kind == MariaDB {
		c := mysql.NewConfig()
		c.User, c.Passwd, c.Net, c.Addr, c.DBName = user, password, "tcp", net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), name
		c.Logger = &mysql.NopLogger{}
		conn, err := mysql.NewConnector(c)
		if err != nil {
			return nil, err
		}
		return sql.OpenDB(conn), nil
	}
	url := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", user, s.Host, s.Port, name)
	if password == "" {
		url = fmt.Sprintf("postgres://%s@/%s?host=%s&port=%d", user, name, s.Socket, s.Port)
	}
	pc, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	pc.Password = password
	return stdlib.OpenDB(*pc), nil
}

// NewUser creates a user with a random name and password that can log in
// from 127.0.0.1 and holds exactly the grants given: statements in which
// USER stands for the user (MariaDB: 'name'@'127.0.0.1') and DB for the
// database. It returns the user's name and password.
func (s *Server) NewUser(t testing.TB, db string, grants ...string) (string, string) {
	t.Helper()
	user, password := randomName("u_"), randomName("p")+randomName("")
	ctx := context.Background()
	who := user
	create := "CREATE USER " + user + " PASSWORD '" + password + "'"
	if s.Kind == MariaDB {
		who = "'" + user + "'@'127.0.0.1'"
		create = "CREATE USER " + who + " IDENTIFIED BY '" + password + "'"
	}
	if _, err := s.admin.ExecContext(ctx, create); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.Kind == Postgres {
			// A user's privileges go before the user.
			if c, err := s.Connect(db, "postgres", ""); err == nil {
				_, _ = c.ExecContext(context.Background(), "DROP OWNED BY "+user)
				c.Close()
			}
		}
		_, _ = s.admin.ExecContext(context.Background(), "DROP USER IF EXISTS "+who)
	})
	exec := s.admin
	if s.Kind == Postgres {
		c, err := s.Connect(db, "postgres", "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		exec = c
	}
	for _, g := range grants {
		g = strings.ReplaceAll(strings.ReplaceAll(g, "USER", who), "DB", db)
		if _, err := exec.ExecContext(ctx, g); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
	return user, password
}

// ErrStopped is what a Proxy's connections get once it is cut.
var ErrStopped = errors.New("proxy cut")

// Proxy forwards TCP connections from a loopback port of its own to the
// server, until Cut: then it drops every connection and refuses new ones,
// as a database that went away. A test points the guard at Addr.
type Proxy struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
	wg    sync.WaitGroup
}

// NewProxy starts a proxy to the server, closed when t ends.
func (s *Server) NewProxy(t testing.TB) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, to: net.JoinHostPort(s.Host, strconv.Itoa(s.Port))}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Cut)
	return p
}

// Port is the proxy's port on 127.0.0.1.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// Cut drops every connection through the proxy and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		return
	}
	p.cut = true
	conns := p.conns
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
