// Command benchtable turns the output of microlock's benchmarks
// (go test -bench ./internal/bench, one or more runs, -count repetitions
// included) into one table: microlock, etcd's concurrency.Mutex and the raw
// etcd floor side by side, medians of the repetitions, the ratio each target
// is about, the target, and whether it is met.
//
// Usage:
//
//	benchtable [-o table.md] [bench-output ...]
//
// With no file it reads standard input. It prints the table and, with -o,
// also writes it to a file. It exits with status 1 if the input holds no
// benchmark results or cannot be read; missed targets are shown in the
// table, not in the exit status.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	out := flag.String("o", "", "also write the table to this file")
	flag.Parse()
	if err := run(flag.Args(), *out, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(files []string, out string, stdin io.Reader, stdout io.Writer) error {
	var r results
	if len(files) == 0 {
		if err := parse(stdin, &r); err != nil {
			return fmt.Errorf("standard input: %w", err)
		}
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		err = parse(f, &r)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if len(r.samples) == 0 {
		return fmt.Errorf("no benchmark results in the input")
	}
	var buf bytes.Buffer
	render(&buf, &r)
	if _, err := stdout.Write(buf.Bytes()); err != nil {
		return err
	}
	if out != "" {
		return os.WriteFile(out, buf.Bytes(), 0o644)
	}
	return nil
}
