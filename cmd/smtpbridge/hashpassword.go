package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"

	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

func cmdHashPassword(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("hash-password", flag.ContinueOnError)
	algo := fs.String("algorithm", "argon2id", "argon2id or bcrypt")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *algo != "argon2id" && *algo != "bcrypt" {
		return usageError{fmt.Sprintf("--algorithm %q: use argon2id or bcrypt", *algo)}
	}
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		return err
	}
	defer clear(pw)
	if passwd.IsDocumented(pw) {
		fmt.Fprintln(stderr, "warning: this is the sandbox's password, which the README prints: a device with it works in sandbox mode only; check-config and the bridge refuse it anywhere else")
	}
	var hash string
	if *algo == "bcrypt" {
		if len(pw) > 72 {
			return usageError{"bcrypt uses only the first 72 bytes of a password; use argon2id for longer ones"}
		}
		hash, err = passwd.NewBcrypt(pw, passwd.DefaultBcryptCost)
	} else {
		hash, err = passwd.NewArgon2id(pw)
	}
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	fmt.Fprintln(stdout, hash)
	return nil
}

// readPassword prompts twice on a terminal; otherwise it reads stdin up to
// the first line end (so `echo pw | smtpbridge hash-password` works).
func readPassword(stdin io.Reader, stderr io.Writer) ([]byte, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Device password: ")
		pw, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return nil, fmt.Errorf("read password: %w", err)
		}
		fmt.Fprint(stderr, "Again: ")
		again, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return nil, fmt.Errorf("read password: %w", err)
		}
		if !bytes.Equal(pw, again) {
			return nil, usageError{"the passwords differ"}
		}
		clear(again)
		if len(pw) == 0 {
			return nil, usageError{"empty password"}
		}
		return pw, nil
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadBytes('\n')
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read password from stdin: %w", err)
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, usageError{"empty password: pipe it in (printf '%s' \"$PW\" | smtpbridge hash-password) or run on a terminal"}
	}
	return line, nil
}
