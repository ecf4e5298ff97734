// Compile-time stand-in for JMeter's synthetic SaveService$1 (never packaged).
package org.apache.jmeter.save;

class SaveService$1 {}
