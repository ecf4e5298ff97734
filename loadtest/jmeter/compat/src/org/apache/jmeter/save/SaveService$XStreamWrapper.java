// Replacement of JMeter 2.13's SaveService.XStreamWrapper (see XStreamPermitAgent.java):
// same constructors and mapper as the original, plus a permission for every type.
package org.apache.jmeter.save;

import com.thoughtworks.xstream.XStream;
import com.thoughtworks.xstream.converters.reflection.ReflectionProvider;
import com.thoughtworks.xstream.mapper.Mapper;
import com.thoughtworks.xstream.mapper.MapperWrapper;
import com.thoughtworks.xstream.security.AnyTypePermission;
import java.lang.reflect.Constructor;

final class SaveService$XStreamWrapper extends XStream {
    private SaveService$XStreamWrapper(ReflectionProvider reflectionProvider) {
        super(reflectionProvider);
        addPermission(AnyTypePermission.ANY);
    }

    // The synthetic constructor SaveService calls (its second argument is always null).
    SaveService$XStreamWrapper(ReflectionProvider reflectionProvider, SaveService$1 unused) {
        this(reflectionProvider);
    }

    @Override
    protected MapperWrapper wrapMapper(MapperWrapper next) {
        // The original's alias mapper (SaveService$XStreamWrapper$1), kept as it is.
        try {
            Class<?> c = Class.forName(
                "org.apache.jmeter.save.SaveService$XStreamWrapper$1", true, getClass().getClassLoader());
            Constructor<?> k = c.getDeclaredConstructor(getClass(), Mapper.class);
            k.setAccessible(true);
            return (MapperWrapper) k.newInstance(this, next);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("JMeter 2.13 SaveService layout not found", e);
        }
    }
}
