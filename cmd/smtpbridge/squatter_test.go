package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
)

// runSquatter is the squatter process: it records each request's
// method, path and Authorization header in log.
func runSquatter(addr, log string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.OpenFile(log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%s %s Authorization=%q\n", r.Method, r.URL.Path, r.Header.Get("Authorization"))
			f.Close()
		}
		w.Write([]byte(`{"ok":true,"messages":[]}`))
	}))
}
