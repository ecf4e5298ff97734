// Java agent making Debian's JMeter 2.13 load test plans again (docs/loadtest.md).
//
// Debian ships JMeter 2.13 with XStream 1.4.20, whose default security framework
// refuses every type JMeter 2.13 never declared ("ForbiddenClassException:
// org.apache.jmeter.save.ScriptWrapper"), so stock `jmeter -n -t plan.jmx` fails on any
// plan. This agent swaps in, when JMeter's class loader defines it, a SaveService
// XStream wrapper that behaves like the original and also permits the plan's types:
// what JMeter >= 5 does itself. Nothing else is changed and no file of the system
// installation is touched; loadtest/jmeter.py adds the agent only for JMeter 2.x.
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.security.ProtectionDomain;

public final class XStreamPermitAgent {
    private static final String TARGET = "org/apache/jmeter/save/SaveService$XStreamWrapper";

    public static void premain(String args, Instrumentation inst) throws IOException {
        final byte[] replacement = read("xstream-wrapper.bin");
        inst.addTransformer(new ClassFileTransformer() {
            @Override
            public byte[] transform(ClassLoader loader, String name, Class<?> redefined,
                                    ProtectionDomain domain, byte[] original) {
                return TARGET.equals(name) ? replacement : null;
            }
        });
    }

    private static byte[] read(String resource) throws IOException {
        try (InputStream in = XStreamPermitAgent.class.getResourceAsStream("/" + resource)) {
            if (in == null) {
                throw new IOException("agent resource missing: " + resource);
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[8192];
            for (int n; (n = in.read(buf)) > 0; ) {
                out.write(buf, 0, n);
            }
            return out.toByteArray();
        }
    }
}
