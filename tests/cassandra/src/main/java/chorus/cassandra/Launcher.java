package chorus.cassandra;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

import org.apache.cassandra.service.CassandraDaemon;

/**
 * Starts a single-node Apache Cassandra in this JVM for the CQL store tests.
 *
 * <p>Usage: {@code Launcher <dir> [native-port]}. Writes {@code <dir>/cassandra.yaml}
 * (listening on 127.0.0.1 only, data under {@code <dir>/data}), sets the system
 * properties a single test node needs, and runs {@link CassandraDaemon} in the
 * foreground. The heap cap and the Java 17 module flags are JVM options and
 * live in scripts/cassandra.sh.
 */
public final class Launcher {
    private Launcher() {}

    public static void main(String[] args) throws IOException {
        if (args.length < 1) {
            System.err.println("usage: Launcher <dir> [native-port]");
            System.exit(2);
        }
        Path dir = Paths.get(args[0]).toAbsolutePath();
        int nativePort = args.length > 1 ? Integer.parseInt(args[1]) : 9042;
        Path data = dir.resolve("data");
        Files.createDirectories(data);
        Path yaml = dir.resolve("cassandra.yaml");
        Files.write(yaml, config(data, nativePort).getBytes(StandardCharsets.UTF_8));

        setDefault("cassandra.config", yaml.toUri().toString());
        setDefault("cassandra.storagedir", data.toString());
        setDefault("cassandra-foreground", "yes");
        setDefault("cassandra.logdir", dir.resolve("logs").toString());
        // One node: no peers to wait for.
        setDefault("cassandra.skip_wait_for_gossip_to_settle", "0");
        setDefault("cassandra.ring_delay_ms", "0");
        setDefault("cassandra.superuser_setup_delay_ms", "0");
        setDefault("cassandra.initial_token", "0");
        // No JMX port and no native libraries beyond JNA's.
        setDefault("cassandra.native.epoll.enabled", "false");
        setDefault("io.netty.transport.noNative", "true");

        CassandraDaemon.main(new String[0]);
    }

    private static void setDefault(String key, String value) {
        if (System.getProperty(key) == null) {
            System.setProperty(key, value);
        }
    }

    private static String config(Path data, int nativePort) {
        String d = data.toString();
        return String.join("\n",
                "cluster_name: chorus-test",
                "num_tokens: 1",
                "partitioner: org.apache.cassandra.dht.Murmur3Partitioner",
                "listen_address: 127.0.0.1",
                "rpc_address: 127.0.0.1",
                "storage_port: 7000",
                "native_transport_port: " + nativePort,
                "start_native_transport: true",
                "seed_provider:",
                "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider",
                "    parameters:",
                "      - seeds: \"127.0.0.1:7000\"",
                "endpoint_snitch: SimpleSnitch",
                "data_file_directories:",
                "  - " + d + "/data",
                "commitlog_directory: " + d + "/commitlog",
                "saved_caches_directory: " + d + "/saved_caches",
                "hints_directory: " + d + "/hints",
                "cdc_raw_directory: " + d + "/cdc_raw",
                // An acknowledged write is in the commit log on disk: the
                // node fsyncs before it answers (batch mode: concurrent
                // writes share one fsync, no fixed window to wait out).
                "commitlog_sync: batch",
                "authenticator: AllowAllAuthenticator",
                "authorizer: AllowAllAuthorizer",
                "role_manager: CassandraRoleManager",
                "concurrent_reads: 8",
                "concurrent_writes: 8",
                "concurrent_counter_writes: 8",
                "memtable_allocation_type: heap_buffers",
                "disk_access_mode: mmap_index_only",
                "auto_snapshot: false",
                "snapshot_on_duplicate_row_detection: false",
                "dynamic_snitch: false",
                "hinted_handoff_enabled: false",
                "write_request_timeout: 2000ms",
                "read_request_timeout: 5000ms",
                "range_request_timeout: 10000ms",
                "request_timeout: 10000ms",
                "");
    }
}
