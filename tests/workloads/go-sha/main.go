// go-sha: a Go workload for bar's tests of Go stacks. main.hashLoop hashes a buffer with
// crypto/sha256 until the time is up. On amd64, sha256's block function is assembly that
// uses RBP as a data register, so only Go's own unwind tables (.gopclntab) lead from it back
// to main.hashLoop; frame pointers give a garbage return address there.
//
//	go-sha [--wait] SECONDS
//
// With --wait it reads one line from stdin before it starts, so that a recording can be
// attached first. At the end it prints one JSON line: the hashes done and the time taken.
package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"os"
	"strconv"
	"time"
)

// hashLoop hashes buf over and over until deadline and returns how many times it did. It
// stays a frame of its own (no inlining) so that stacks can name it.
//
//go:noinline
func hashLoop(buf []byte, deadline time.Time) (uint64, byte) {
	var n uint64
	var acc byte
	for time.Now().Before(deadline) {
		// Enough hashing per clock read that the samples sit in sha256, not in time.Now.
		for i := 0; i < 64; i++ {
			sum := sha256.Sum256(buf)
			acc ^= sum[0]
			buf[0] = acc
			n++
		}
	}
	return n, acc
}

func main() {
	args := os.Args[1:]
	wait := len(args) > 0 && args[0] == "--wait"
	if wait {
		args = args[1:]
	}
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: go-sha [--wait] SECONDS")
		os.Exit(2)
	}
	secs, err := strconv.ParseFloat(args[0], 64)
	if err != nil || secs <= 0 || secs > 3600 {
		fmt.Fprintln(os.Stderr, "go-sha: SECONDS must be a number between 0 and 3600")
		os.Exit(2)
	}
	if wait {
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fmt.Fprintln(os.Stderr, "go-sha: stdin closed before the go-ahead")
			os.Exit(1)
		}
	}
	buf := make([]byte, 4096)
	start := time.Now()
	n, acc := hashLoop(buf, start.Add(time.Duration(secs*float64(time.Second))))
	elapsed := time.Since(start)
	fmt.Printf("{\"hashes\":%d,\"bytes_per_hash\":%d,\"elapsed_us\":%d,\"check\":%d}\n",
		n, len(buf), elapsed.Microseconds(), acc)
}
