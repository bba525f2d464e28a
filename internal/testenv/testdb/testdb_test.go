package testdb

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Each server starts, gives a test a database of its own with the schema
// loaded, and a user that logs in over TCP with its password and can do
// exactly what it was granted.
func TestServers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(testing.TB) *Server
		grant string
	}{
		{"mariadb", StartMariaDB, "GRANT SELECT ON DB.t TO USER"},
		{"postgres", StartPostgres, "GRANT SELECT ON t TO USER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := tc.start(t)
			db := s.NewDatabase(t, "CREATE TABLE t (id VARCHAR(20) NOT NULL, v VARCHAR(40));\nINSERT INTO t VALUES ('a', 'x');\nCREATE TABLE u (id INT);")
			user, pass := s.NewUser(t, db, tc.grant)
			c, err := s.Connect(db, user, pass)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var v string
			if err := c.QueryRow("SELECT v FROM t WHERE id = 'a'").Scan(&v); err != nil || v != "x" {
				t.Fatalf("SELECT as the granted user: %q, %v", v, err)
			}
			if _, err := c.Exec("SELECT id FROM u"); err == nil {
				t.Error("the user reads a table it was not granted")
			}
			if _, err := c.Exec("UPDATE t SET v = 'y'"); err == nil {
				t.Error("the user updates a table it may only read")
			}
		})
	}
}
