// Command pstest serves Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/v2/pstest) on
// 127.0.0.1:-port, so tests can point google-cloud-pubsub at it with PUBSUB_EMULATOR_HOST.
// It runs until SIGTERM or SIGINT; the tests stop it by PID.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"cloud.google.com/go/pubsub/v2/pstest"
)

func main() {
	port := flag.Int("port", 8085, "TCP port to serve on (127.0.0.1 only)")
	flag.Parse()

	srv := pstest.NewServerWithAddress(fmt.Sprintf("127.0.0.1:%d", *port))
	log.Printf("pstest listening on %s", srv.Addr)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	_ = srv.Close()
	log.Printf("pstest stopped")
}
