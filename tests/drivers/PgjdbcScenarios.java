// pgjdbc scenarios for tests/drivers.rs, run as a single source file:
// java -cp postgresql.jar PgjdbcScenarios.java SCENARIO. The connection
// comes from the PG* environment variables. Prints a transcript (one line per
// step) that the Rust test compares with the direct run's.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;

public class PgjdbcScenarios {
    interface Step {
        String run() throws SQLException;
    }

    static final List<String> lines = new ArrayList<>();

    static void step(String name, Step step) {
        String outcome;
        try {
            outcome = step.run();
        } catch (SQLException e) {
            outcome = "error " + e.getSQLState() + ": " + e.getMessage().split("\n")[0];
        }
        lines.add(name + ": " + outcome);
    }

    static Connection connect() throws SQLException {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
                + "/" + System.getenv("PGDATABASE");
        Properties props = new Properties();
        props.setProperty("user", System.getenv("PGUSER"));
        props.setProperty("password", System.getenv("PGPASSWORD"));
        props.setProperty("sslmode", "disable");
        // A hung read ends the run before the Rust test's own limit.
        props.setProperty("socketTimeout", "60");
        // Server-side prepared statements from the first execution.
        props.setProperty("prepareThreshold", "1");
        return DriverManager.getConnection(url, props);
    }

    static String rows(ResultSet rs) throws SQLException {
        StringBuilder out = new StringBuilder("[");
        int columns = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            out.append("(");
            for (int i = 1; i <= columns; i++) {
                out.append(i > 1 ? ", " : "").append(rs.getObject(i));
                out.append(" ").append(rs.getMetaData().getColumnTypeName(i));
            }
            out.append(")");
        }
        return out.append("]").toString();
    }

    // Prepared statements with DDL in between, an error inside a
    // transaction and its rollback, a batch, LISTEN and a NOTIFY to itself.
    static void basics() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS drv_jdbc; CREATE TABLE drv_jdbc (a int, b int)");
            s.execute("INSERT INTO drv_jdbc VALUES (1, 2)");
            PreparedStatement q = c.prepareStatement("SELECT a, b FROM drv_jdbc WHERE a = ?");
            for (int i = 0; i < 3; i++) {
                step("prepared " + i, () -> {
                    q.setInt(1, 1);
                    return rows(q.executeQuery());
                });
            }
            step("alter", () -> String.valueOf(s.executeUpdate(
                    "ALTER TABLE drv_jdbc ALTER COLUMN b TYPE real")));
            step("prepared after alter", () -> rows(q.executeQuery()));
            step("prepared again", () -> rows(q.executeQuery()));
            c.setAutoCommit(false);
            step("insert in transaction", () -> String.valueOf(s.executeUpdate(
                    "INSERT INTO drv_jdbc VALUES (2, 3)")));
            step("error in transaction", () -> rows(s.executeQuery("SELECT 1 / 0")));
            step("after the error", () -> rows(s.executeQuery("SELECT 1")));
            c.rollback();
            c.setAutoCommit(true);
            step("rows after rollback", () -> rows(s.executeQuery("SELECT count(*) FROM drv_jdbc")));
            step("batch", () -> {
                PreparedStatement ins = c.prepareStatement("INSERT INTO drv_jdbc VALUES (?, ?)");
                for (int i = 10; i < 15; i++) {
                    ins.setInt(1, i);
                    ins.setFloat(2, i);
                    ins.addBatch();
                }
                return java.util.Arrays.toString(ins.executeBatch());
            });
            step("listen", () -> String.valueOf(s.execute("LISTEN drv_jdbc_chan")));
            step("notify", () -> String.valueOf(s.execute("NOTIFY drv_jdbc_chan, 'to myself'")));
            PGConnection pg = c.unwrap(PGConnection.class);
            step("notifications", () -> {
                PGNotification[] got = pg.getNotifications(5000);
                StringBuilder out = new StringBuilder("[");
                for (PGNotification n : got == null ? new PGNotification[0] : got) {
                    out.append("(").append(n.getName()).append(", ").append(n.getParameter())
                            .append(", own pid ").append(n.getPID() == pg.getBackendPID()).append(")");
                }
                return out.append("]").toString();
            });
        }
    }

    public static void main(String[] args) throws Exception {
        if (!args[0].equals("basics")) {
            throw new IllegalArgumentException("unknown scenario " + args[0]);
        }
        basics();
        lines.add("driver: pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION);
        for (String line : lines) {
            System.out.println(line);
        }
    }
}
